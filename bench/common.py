"""Shared pieces of the benchmarks: digits data, a tiny timm-like model, label-noise generators, an expert panel.

Everything here is a pure function of its arguments and a seed (numpy `Generator`), so a benchmark cell is
reproducible from (noise type, rate, seed).

Noise generators take the true labels `y` (N,) and return noisy labels (N,) in which **exactly**
`round(rate * N)` rows differ from `y` (the achieved rate is the requested one up to rounding):
- `uniform_noise`: random rows, each moved to a uniformly drawn *other* class.
- `pair_flip_noise`: random rows, class i -> (i + 1) mod K ("class-flip").
- `feature_noise`: the rows nearest a reference classifier's decision boundary (smallest margin between the true
  class and the best other class of a logistic regression fitted on the training images) move to that best
  other class (its "second choice").
The three-expert panel (`expert_panel`) gives each expert its own rate and kind (near-boundary or random);
the training label is the majority vote with the engine's tie rule (`engine.data.aggregate.MajorityVote`, a tie
goes to the later class), and the noise rate is that of the majority, calibrated to the requested rate.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 10
NOISE_TYPES = ("uniform", "class-flip", "feature", "panel")


# ---------------------------------------------------------------------------------------------------------------
# data


@dataclass
class DigitsSplit:
    """uint8 images (N, 1, 8, 8) and int labels per role; `train_y` are the TRUE labels (noise is added later)."""

    train_x: np.ndarray
    train_y: np.ndarray
    meta_x: np.ndarray
    meta_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_digits_u8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8×8 digit images as uint8 (N, 1, 8, 8) (0..16 scaled to 0..255) and labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    return x, d.target.astype(np.int64)


def split_digits(seed: int, *, meta_per_class: int = 10, test: int = 500) -> DigitsSplit:
    """Stratified split: `meta_per_class` clean meta images per class, `test` held-out images, the rest train."""
    x, y = load_digits_u8()
    rng = np.random.default_rng(seed)
    meta_idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), meta_per_class, replace=False) for c in range(NUM_CLASSES)]
    )
    rest = np.setdiff1d(np.arange(len(y)), meta_idx)
    # stratified test draw: per class, its share of `test` (largest remainders), the rest is train
    share = np.array([(y[rest] == c).sum() for c in range(NUM_CLASSES)]) * test / len(rest)
    n_test = np.floor(share).astype(int)
    n_test[np.argsort(-(share - n_test), kind="stable")[: test - n_test.sum()]] += 1
    test_idx = np.sort(
        np.concatenate([rng.choice(rest[y[rest] == c], n_test[c], replace=False) for c in range(NUM_CLASSES)])
    )
    train_idx = np.setdiff1d(rest, test_idx)
    return DigitsSplit(x[train_idx], y[train_idx], x[meta_idx], y[meta_idx], x[test_idx], y[test_idx])


def digits_stats(x_u8: np.ndarray) -> tuple[tuple[float], tuple[float]]:
    """Per-channel mean/std of images in [0, 1] (the TrainContext normalisation)."""
    f = x_u8.astype(np.float64) / 255.0
    return (float(f.mean()),), (float(f.std()),)


# ---------------------------------------------------------------------------------------------------------------
# model


class TinyNet(nn.Module):
    """A small MLP with timm's classifier interface (what MetaLabelNet/MLC use).

    forward_features(x) -> (B, F) hidden features; forward_head(feats, pre_logits=True) -> (B, F) pooled features
    (identity here), else logits; get_classifier() -> the nn.Linear head; num_features = F.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, in_chans: int = 1, img_size: int = 8, hidden: int = 128):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = hidden
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_chans * img_size * img_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------
# noise


def _n_flip(n: int, rate: float) -> int:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    return int(round(rate * n))


def uniform_noise(y: np.ndarray, rate: float, rng: np.random.Generator, k: int = NUM_CLASSES) -> np.ndarray:
    """round(rate·N) random rows get a uniformly drawn class other than their own."""
    y = np.asarray(y, dtype=np.int64)
    out = y.copy()
    idx = rng.choice(len(y), _n_flip(len(y), rate), replace=False)
    out[idx] = (y[idx] + rng.integers(1, k, size=len(idx))) % k  # shift 1..k-1: never the true class
    return out


def pair_flip_noise(y: np.ndarray, rate: float, rng: np.random.Generator, k: int = NUM_CLASSES) -> np.ndarray:
    """round(rate·N) random rows: class i -> (i + 1) mod k."""
    y = np.asarray(y, dtype=np.int64)
    out = y.copy()
    idx = rng.choice(len(y), _n_flip(len(y), rate), replace=False)
    out[idx] = (y[idx] + 1) % k
    return out


def reference_probas(x_u8: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, K) probabilities of a logistic regression fitted on the (clean) training images themselves."""
    from sklearn.linear_model import LogisticRegression

    f = x_u8.reshape(len(x_u8), -1).astype(np.float64) / 255.0
    clf = LogisticRegression(C=0.05, max_iter=2000, random_state=seed)  # strong L2: graded, non-saturated margins
    clf.fit(f, y)
    proba = np.zeros((len(y), NUM_CLASSES))
    proba[:, clf.classes_] = clf.predict_proba(f)
    return proba


def boundary_margin(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """margin_i = p_i[y_i] − max_{k≠y_i} p_i[k] and that best other class ("second choice")."""
    other = proba.copy()
    other[np.arange(len(y)), y] = -np.inf
    second = other.argmax(1)
    return proba[np.arange(len(y)), y] - other[np.arange(len(y)), second], second


def feature_noise(
    y: np.ndarray, rate: float, proba: np.ndarray, *, rng: np.random.Generator | None = None, jitter: float = 0.0
) -> np.ndarray:
    """The round(rate·N) rows with the smallest margin move to their second choice.

    `jitter` > 0 adds N(0, jitter) to the margins before ranking (an expert's own view of "hard"), drawn from `rng`.
    """
    y = np.asarray(y, dtype=np.int64)
    margin, second = boundary_margin(proba, y)
    if jitter > 0:
        margin = margin + rng.normal(0.0, jitter, size=len(y))
    idx = np.argsort(margin, kind="stable")[: _n_flip(len(y), rate)]
    out = y.copy()
    out[idx] = second[idx]
    return out


# --- the expert panel ------------------------------------------------------------------------------------------

# (kind, relative rate): two experts who err on hard (near-boundary) images, with their own view of which images
# are hard, and one careless expert who errs at random; rates are scaled together to reach the target.
PANEL = (("boundary", 1.0), ("boundary", 0.8), ("random", 1.2))
PANEL_JITTER = 0.15  # std of the per-expert perturbation of the reference margins


def panel_votes(y: np.ndarray, scale: float, proba: np.ndarray, seed: int) -> np.ndarray:
    """(N, 3) expert votes for a given common rate scale (each expert's rate = min(1, scale × relative rate))."""
    cols = []
    for e, (kind, rel) in enumerate(PANEL):
        rng = np.random.default_rng([seed, e])
        rate = min(1.0, scale * rel)
        if kind == "boundary":
            cols.append(feature_noise(y, rate, proba, rng=rng, jitter=PANEL_JITTER))
        else:
            cols.append(uniform_noise(y, rate, rng))
    return np.stack(cols, 1)


def majority(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote and tie flags with the engine's rule (a tie goes to the later class)."""
    from engine.data.aggregate import MajorityVote

    mv = MajorityVote(tie_break="severe").fit(votes, NUM_CLASSES)
    return mv.labels_, mv.tie_


def expert_panel(y: np.ndarray, rate: float, proba: np.ndarray, seed: int, *, tol: float = 0.005) -> dict:
    """Three experts whose majority vote has noise rate ≈ `rate` (bisection on the common rate scale).

    Returns {"votes" (N,3), "labels" (N,), "tie" (N,), "expert_rates" [3], "rate" (achieved majority rate)}.
    The achieved rate is monotone in the scale only approximately (random draws), hence the tolerance;
    the rate actually reached is returned and reported.
    """
    y = np.asarray(y, dtype=np.int64)

    def run(scale):
        votes = panel_votes(y, scale, proba, seed)
        labels, tie = majority(votes)
        return votes, labels, tie, float((labels != y).mean())

    lo, hi = 0.0, 1.0 / min(r for _, r in PANEL)  # at hi every expert is at rate 1
    best = run(hi)
    if best[3] >= rate:
        for _ in range(30):
            mid = (lo + hi) / 2
            cur = run(mid)
            if abs(cur[3] - rate) < abs(best[3] - rate):
                best = cur
            if abs(cur[3] - rate) <= tol:
                break
            lo, hi = (mid, hi) if cur[3] < rate else (lo, mid)
    votes, labels, tie, achieved = best
    return {
        "votes": votes,
        "labels": labels,
        "tie": tie,
        "expert_rates": [float((votes[:, e] != y).mean()) for e in range(votes.shape[1])],
        "rate": achieved,
    }


def make_noisy_labels(kind: str, y: np.ndarray, rate: float, seed: int, train_x: np.ndarray) -> dict:
    """Dispatch over NOISE_TYPES. Returns {"labels", "rate" (achieved), "expert_rates" (panel only), "tie"}."""
    rng = np.random.default_rng([seed, 12345])
    if kind == "uniform":
        labels = uniform_noise(y, rate, rng)
    elif kind == "class-flip":
        labels = pair_flip_noise(y, rate, rng)
    elif kind == "feature":
        labels = feature_noise(y, rate, reference_probas(train_x, y, seed))
    elif kind == "panel":
        out = expert_panel(y, rate, reference_probas(train_x, y, seed), seed)
        out["tie_rate"] = float(out["tie"].mean())
        return out
    else:
        raise ValueError(f"unknown noise type {kind!r}; choose from {NOISE_TYPES}")
    return {"labels": labels, "rate": float((labels != y).mean())}


# ---------------------------------------------------------------------------------------------------------------
# environment (for RESULTS.md)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu") -> dict:
    import sklearn
    import timm

    env = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
