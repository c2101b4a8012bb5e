"""Benchmark data that looks like the job: synthetic ROP-like fundus images with ground truth, graded by a
three-expert panel or by one expert under a known noise model.

The images come from the product's own demo generator (`engine.data.demo.render_fundus`): each image has a hidden
severity in [0, 1] that raises vessel tortuosity and width; the true class thresholds it (normal < 0.45 ≤ pre-plus <
0.70 ≤ plus), about 50/30/20 %. Rendering is deterministic in (seed, index) and cached as one `.npz` per
(n, seed, size) under `bench/out/cache/`.

Scenarios (`SCENARIOS`), every one with a clean meta set of `META_PER_CLASS` images per class and a clean held-out
test set of `N_TEST` random images:
- `panel`: three experts who see the severity through their own Gaussian noise and apply their own thresholds, so
  they err near the class borders (image-dependent) and differ in reliability (noise sd 1 : 1.5 : 2.5 and biased
  thresholds). Their noise is scaled together (bisection) until the majority vote is wrong on `rate` of the
  training images. Meta images are drawn from the unanimous images whose vote is right (the product draws meta from
  consensus; "clean" as the benchmark asks).
- single expert: `uniform` (a fraction `rate` of the labels moved to a uniformly drawn other class), `pair-flip`
  (class k -> k+1 mod 3), `feature` (the `rate` of images whose severity lies nearest a class border are moved
  across that border: the borderline images are the mislabelled ones). Meta images are random clean images.
Every generator hits its rate exactly up to rounding.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.demo import TRUE_THRESHOLDS, render_fundus, severity_class, severity_from_uniform

CLASSES = ("normal", "pre-plus", "plus")
K = len(CLASSES)
CACHE = Path(__file__).resolve().parent / "out" / "cache"
META_PER_CLASS = 10
N_TEST = 400


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # panel | uniform | pair-flip | feature
    rate: float  # fraction of wrong (majority) training labels


SCENARIOS = (
    Scenario("panel-30", "panel", 0.30),
    Scenario("uniform-40", "uniform", 0.40),
    Scenario("uniform-80", "uniform", 0.80),
    Scenario("pairflip-40", "pair-flip", 0.40),
    Scenario("feature-40", "feature", 0.40),
    Scenario("feature-70", "feature", 0.70),
)


def scenario(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise ValueError(f"unknown scenario {name!r}; choose from {[s.name for s in SCENARIOS]}")


# ----------------------------------------------------------------------------------------------- images


def render_set(n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 images and (N,) severities; cached on disk (deterministic in n, seed, size)."""
    path = CACHE / f"fundus_n{n}_s{seed}_px{size}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return z["images"], z["severity"]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # e.g. emptied by a machine crash
            path.unlink(missing_ok=True)
    rng = np.random.default_rng([seed, 100])
    severity = severity_from_uniform(rng.uniform(size=n))
    left = rng.random(n) < 0.5
    images = np.stack([render_fundus(np.random.default_rng([seed, 101, i]), size, severity=float(severity[i]),
                                     left_eye=bool(left[i])) for i in range(n)])
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # one per process: parallel workers may render the same set
    with open(tmp, "wb") as fh:
        np.savez(fh, images=images, severity=severity)
        fh.flush()
        os.fsync(fh.fileno())  # durable before the rename, so a crash cannot leave an empty cache file
    tmp.replace(path)
    return images, severity


# ----------------------------------------------------------------------------------------------- noise


def _n(n: int, rate: float) -> int:
    return int(round(rate * n))


def uniform_noise(y: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    out = y.copy()
    idx = rng.choice(len(y), _n(len(y), rate), replace=False)
    out[idx] = (y[idx] + rng.integers(1, K, size=len(idx))) % K
    return out


def pair_flip_noise(y: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    out = y.copy()
    idx = rng.choice(len(y), _n(len(y), rate), replace=False)
    out[idx] = (y[idx] + 1) % K
    return out


def border_noise(severity: np.ndarray, y: np.ndarray, rate: float) -> np.ndarray:
    """The round(rate·N) images nearest a class border move across the nearest border (to the adjacent class)."""
    t = np.asarray(TRUE_THRESHOLDS)
    dist = np.abs(severity[:, None] - t[None, :])  # (N, 2) distance to each border
    nearest = dist.argmin(1)
    # crossing border j moves class j <-> j+1
    target = np.where(y <= nearest, nearest + 1, nearest)
    idx = np.argsort(dist.min(1), kind="stable")[: _n(len(y), rate)]
    out = y.copy()
    out[idx] = target[idx]
    return out


PANEL_NOISE = (1.0, 1.5, 2.5)  # relative noise sd of the three experts (reliable, average, careless)
PANEL_BIAS = ((0.03, 0.03), (-0.04, -0.04), (0.0, 0.0))  # threshold shifts: conservative, early, unbiased


def panel_votes(severity: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """(N, 3) votes: expert e thresholds severity + N(0, scale·PANEL_NOISE[e]) at the true borders + bias."""
    cols = []
    for e, (rel, bias) in enumerate(zip(PANEL_NOISE, PANEL_BIAS, strict=True)):
        rng = np.random.default_rng([seed, 200, e])
        seen = severity + rng.normal(0.0, scale * rel, len(severity))
        cols.append(severity_class(seen, tuple(np.add(TRUE_THRESHOLDS, bias))))
    return np.stack(cols, 1)


def majority_vote(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The engine's majority vote (a tie goes to the more severe class) -> labels (N,), tie (N,) bool."""
    from engine.data.aggregate import MajorityVote

    mv = MajorityVote(tie_break="severe").fit(votes, K)
    return mv.labels_, mv.tie_


def calibrated_panel(severity: np.ndarray, y: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Votes whose majority is wrong on ≈ `rate` of the rows (bisection on the common noise scale)."""
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(40):
        mid = (lo + hi) / 2
        votes = panel_votes(severity, mid, seed)
        err = float((majority_vote(votes)[0] != y).mean())
        if best is None or abs(err - rate) < abs(best[1] - rate):
            best = (votes, err)
        if abs(err - rate) < 0.002:
            break
        lo, hi = (mid, hi) if err < rate else (lo, mid)
    return best[0]


# ----------------------------------------------------------------------------------------------- a cell


@dataclass
class Cell:
    """One benchmark cell: images, truth and votes, split into train / meta / test (indices into the arrays)."""

    scenario: Scenario
    seed: int
    images: np.ndarray  # (N, S, S, 3) uint8
    truth: np.ndarray  # (N,) int
    votes: np.ndarray  # (N, E) int, -1 = not graded; meta rows carry their clean label
    train: np.ndarray
    meta: np.ndarray
    test: np.ndarray

    @property
    def majority(self) -> np.ndarray:
        return majority_vote(self.votes)[0]


def make_cell(sc: Scenario, seed: int, *, n: int, size: int) -> Cell:
    """Render (or load) n images, draw the scenario's votes on them and split: test (random, N_TEST), meta
    (META_PER_CLASS per class, clean), train (the rest)."""
    images, severity = render_set(n, seed, size)
    y = severity_class(severity)
    rng = np.random.default_rng([seed, 300, SCENARIOS.index(sc)])
    test = np.sort(rng.choice(n, min(N_TEST, n // 4), replace=False))
    pool = np.setdiff1d(np.arange(n), test)
    if sc.kind == "panel":
        votes = np.full((n, len(PANEL_NOISE)), -1)
        votes[pool] = calibrated_panel(severity[pool], y[pool], sc.rate, seed)
        unanimous_right = (votes[pool] == y[pool, None]).all(1)
        candidates = pool[unanimous_right]
    else:
        gen = {"uniform": lambda: uniform_noise(y[pool], sc.rate, rng),
               "pair-flip": lambda: pair_flip_noise(y[pool], sc.rate, rng),
               "feature": lambda: border_noise(severity[pool], y[pool], sc.rate)}[sc.kind]
        votes = np.full((n, 1), -1)
        votes[pool, 0] = gen()
        candidates = pool
    meta = np.sort(np.concatenate([rng.choice(candidates[y[candidates] == k], META_PER_CLASS, replace=False)
                                   for k in range(K)]))
    votes[meta] = y[meta, None]  # the meta set is clean (its labels are the truth)
    votes[test] = -1  # test images are not graded: only the truth is used, for reporting
    train = np.setdiff1d(pool, meta)
    return Cell(sc, seed, images, y, votes, train, meta, test)
