"""Cross-fitting: out-of-sample model probabilities for every training and meta image.

A network grades the images it trained on by the labels it memorised, so its own predictions cannot tell a wrong
label from a right one (cleanlab's central lesson). Here the training rows and the meta rows are split into `k`
stratified folds; for each fold a fresh network is trained by the run's own method and schedule on the other folds
(their training rows and their meta rows) and predicts the held-out fold. Every probability therefore comes from a
network that never saw that image's label, and the meta rows' probabilities are out-of-sample too, so calibrating on
them is honest.

Cost: k networks on (k−1)/k of the rows for `epochs_f` epochs each, i.e. (k−1)·epochs_f/epochs times the main
training's steps; `fold_schedule` picks epochs_f from the budget (≤ 1 keeps the stage within one main training).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.train.context import TensorData, TrainContext
from engine.train.loop import fit, restore_best


def assign_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) fold index in 0..k-1, stratified by label (-1 = unlabelled is a stratum of its own), seeded.

    Within each stratum the rows are shuffled and dealt round-robin, so fold sizes per class differ by at most one."""
    labels = np.asarray(labels, int)
    rng = np.random.default_rng([seed, 4242])
    folds = np.zeros(len(labels), dtype=int)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        folds[idx] = (np.arange(len(idx)) + start) % k  # continue the deal so small classes do not all start at 0
        start += len(idx)
    return folds


@dataclass(frozen=True)
class FoldSchedule:
    epochs: int
    warmup_epochs: int
    milestones: tuple[int, ...]


def fold_schedule(epochs: int, warmup_epochs: int, milestones: tuple[int, ...], *, k: int,
                  budget: float) -> FoldSchedule:
    """Epochs per fold so that k folds on (k−1)/k of the rows cost `budget` × the main training's steps; the
    warm-up and the learning-rate milestones keep their share of the schedule."""
    scale = budget / (k - 1)
    e = max(1, math.floor(epochs * scale + 1e-9))
    w = min(round(warmup_epochs * e / epochs), max(e - 1, 0)) if warmup_epochs else 0
    ms = tuple(sorted({round(m * e / epochs) for m in milestones if 0 < round(m * e / epochs) < e}))
    return FoldSchedule(e, w, ms)


@dataclass
class CrossFit:
    """Out-of-sample probabilities: `train_probs` (N_train, K) and `meta_probs` (N_meta, K), the folds of each row,
    and the seconds each fold took."""

    train_probs: np.ndarray
    meta_probs: np.ndarray
    train_folds: np.ndarray
    meta_folds: np.ndarray
    seconds: list[float]


MakeContext = Callable[[TensorData, TensorData, int], TrainContext]


def crossfit(make_ctx: MakeContext, method_cls, method_cfg, train: TensorData, meta: TensorData, *, k: int,
             seed: int, done: dict | None = None, on_fold: Callable[[int, dict], None] | None = None,
             folds: tuple[np.ndarray, np.ndarray] | None = None) -> CrossFit:
    """Train `k` fold networks with `method_cls(method_cfg, ctx)` and collect their held-out probabilities.

    make_ctx(train_part, meta_part, fold) -> a TrainContext with the fold's network and schedule. `done` holds
    the results of folds finished before an interruption ({fold: {"train": (n, K), "meta": (m, K), "seconds"}}),
    which are reused; `on_fold(fold, result)` is called after each new fold (the pipeline checkpoints it); a new
    fold's result also holds its selected network ("model", a CPU state dict) and its held-out rows ("train_idx",
    "meta_idx"), so a later run can warm-start each fold network on the same folds (engine/warmstart.py).
    `folds` = (train folds (N_train,), meta folds (N_meta,)) fixes the assignment (default: `assign_folds`).
    """
    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {k}")
    train_y, meta_y = train.targets.cpu().numpy(), meta.targets.cpu().numpy()
    if folds is None:
        tf, mf = assign_folds(train_y, k, seed), assign_folds(meta_y, k, seed + 1)
    else:
        tf, mf = (np.asarray(f, dtype=int) for f in folds)
        if tf.shape != train_y.shape or mf.shape != meta_y.shape:
            raise ValueError(f"folds have shapes {tf.shape}, {mf.shape}; expected {train_y.shape}, {meta_y.shape}")
    done = dict(done or {})
    n_classes = None
    train_probs = meta_probs = None
    seconds = []
    for f in range(k):
        if f not in done:
            t0 = time.time()
            part_train = train.subset(np.flatnonzero(tf != f))
            part_meta = meta.subset(np.flatnonzero(mf != f))
            ctx = make_ctx(part_train, part_meta, f)
            method = method_cls(method_cfg, ctx)
            state = fit(ctx, method)
            model = restore_best(ctx, method, state)
            done[f] = {"train": ctx.predict(train.subset(np.flatnonzero(tf == f)), model).numpy(),
                       "meta": ctx.predict(meta.subset(np.flatnonzero(mf == f)), model).numpy(),
                       "seconds": time.time() - t0,
                       "model": {name: v.detach().cpu().clone() for name, v in model.state_dict().items()},
                       "train_idx": np.flatnonzero(tf == f), "meta_idx": np.flatnonzero(mf == f)}
            if on_fold:
                on_fold(f, done[f])
        res = done[f]
        if train_probs is None:
            n_classes = res["train"].shape[1]
            train_probs, meta_probs = np.zeros((len(train_y), n_classes)), np.zeros((len(meta_y), n_classes))
        train_probs[tf == f] = res["train"]
        meta_probs[mf == f] = res["meta"]
        seconds.append(float(res["seconds"]))
    return CrossFit(train_probs, meta_probs, tf, mf, seconds)
