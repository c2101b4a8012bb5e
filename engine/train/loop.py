"""The epoch loop shared by the pipeline and the benchmarks: warm-up, main phase, model selection, resume.

Each epoch reseeds every random stream from (seed, epoch), so resuming from the checkpoint written after epoch e
reproduces an uninterrupted run exactly on the CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from engine import distributed as D
from engine.methods.base import Method
from engine.train.context import TrainContext, epoch_seed, seed_everything
from engine.train.steps import ce_epoch


@dataclass
class FitState:
    """Everything needed to resume: the last finished epoch and the best epoch so far."""

    epoch: int = -1  # last finished epoch
    best_epoch: int = -1
    best_meta_acc: float = -math.inf
    best_model: dict | None = None  # state_dict of the selected model (CPU)
    best_soft_labels: torch.Tensor | None = None  # (N_train, K) at the best epoch (see `fit`)
    best_flag_scores: np.ndarray | None = None
    best_train_probs: torch.Tensor | None = None  # (N_train, K) the selected model's predictions, set when fit ends
    history: list[dict] = field(default_factory=list)
    started: bool = False  # method.start() has run

    def to_dict(self) -> dict:
        """Tensors and plain Python values only, so a checkpoint loads with `torch.load(weights_only=True)`."""
        d = dict(self.__dict__)
        if self.best_flag_scores is not None:
            d["best_flag_scores"] = torch.as_tensor(np.asarray(self.best_flag_scores, dtype=np.float64))
        d["history"] = [_plain(record) for record in self.history]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FitState:
        scores = d.get("best_flag_scores")
        if isinstance(scores, torch.Tensor):
            d = {**d, "best_flag_scores": scores.numpy()}
        return cls(**d)


def _plain(value):
    """numpy scalars and arrays inside nested dicts/lists -> Python numbers and lists (tensors are kept)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(ctx: TrainContext, method: Method, *, state: FitState | None = None,
        on_epoch_end: Callable[[FitState], None] | None = None,
        on_epoch_start: Callable[[int, str], None] | None = None) -> FitState:
    """Train from `state` (fresh if None) to `ctx.epochs`; keep the epoch with the best meta accuracy.

    Warm-up epochs (< ctx.warmup_epochs) train cross-entropy on majority labels; the method's main phase follows.
    Model selection by meta accuracy considers the main-phase epochs and the last warm-up epoch.

    Evaluation per epoch is what selection and the progress curves need: meta and test accuracy (small sets), and
    for methods that learn labels their soft labels once (for the drift record and, at a new best, to keep). The
    training set is predicted once, when training ends, by the selected model: `best_train_probs`, the history's
    `train_acc_majority` of the selected epoch, and `best_soft_labels` where the selected model's predictions are the
    soft labels (the warm-up, and methods that do not learn labels).
    """
    state = state or FitState()
    n_train = len(ctx.train)
    for epoch in range(state.epoch + 1, ctx.epochs):
        t0 = time.time()
        seed_everything(epoch_seed(ctx.seed, epoch, stream=7))
        lr = ctx.set_lr(epoch)
        warm = epoch < ctx.warmup_epochs
        stage = "warmup" if warm else "main"
        if on_epoch_start:
            on_epoch_start(epoch, stage)
        traffic = D.TRAFFIC["all_reduce_bytes"]
        if warm:
            stats = ce_epoch(ctx, epoch, stage="warmup")
        else:
            if not state.started:
                method.start()
                state.started = True
            stats = method.train_epoch(epoch)
        stats = _across_processes(ctx, stats, traffic)
        t_eval = time.time()
        model = method.model_for_eval()
        meta_acc = ctx.accuracy(ctx.meta, model)
        record = {"epoch": epoch, "stage": stage, "lr": lr, **stats, "meta_acc": meta_acc,
                  "test_acc": ctx.accuracy(ctx.test, model) if ctx.test is not None else None}
        own_labels = state.started and method.learns_labels
        soft = method.soft_labels() if own_labels else None
        if soft is not None:
            record.update(label_drift(soft, ctx.train.targets.cpu()))
        # Candidates: the main-phase epochs and the warm-up's last epoch, so a main phase that only hurts the
        # meta accuracy falls back to the warm-up model instead of keeping its least bad epoch.
        last_warm = epoch == min(ctx.warmup_epochs, ctx.epochs) - 1
        selectable = (last_warm or not warm) and (
            warm or getattr(method, "selectable", lambda: True)())  # e.g. O2U: not during its cyclical stage
        better = meta_acc > state.best_meta_acc or (meta_acc == state.best_meta_acc and not warm)  # ties: the method
        if selectable and (better or state.best_model is None):
            state.best_epoch, state.best_meta_acc = epoch, meta_acc
            state.best_model = _cpu_state(model)
            if soft is not None:
                assert soft.shape == (n_train, ctx.num_classes), soft.shape
            state.best_soft_labels = None if soft is None else soft.float().cpu()  # None: the model's, at the end
            scores = method.flag_scores() if state.started else None
            state.best_flag_scores = None if scores is None else np.asarray(scores, dtype=float)
        record["eval_seconds"] = time.time() - t_eval
        record["seconds"] = time.time() - t0
        state.history.append(record)
        state.epoch = epoch
        D.check_in_sync({"model": ctx.model.state_dict(), "optimizer": ctx.optimizer.state_dict()["state"],
                         "method": method.state_dict() if state.started else {}}, "model, optimiser or method state")
        if on_epoch_end:
            on_epoch_end(state)
    _finish(ctx, method, state)
    return state


def _across_processes(ctx: TrainContext, stats: dict, traffic_before: int) -> dict:
    """After an epoch's training with several processes: its statistics averaged over them, the bytes this process
    all-reduced (`allreduce_mb`), and the BatchNorm running statistics averaged (each normalised its own shards), so
    that every process evaluates the same model. One process: `stats` as they are."""
    if not D.world().active:
        return stats
    sent = D.TRAFFIC["all_reduce_bytes"] - traffic_before
    stats = D.mean_stats(stats)
    D.sync_buffers(ctx.model)
    return {**stats, "allreduce_mb": sent / 1e6}


def _finish(ctx: TrainContext, method: Method, state: FitState) -> None:
    """One prediction of the training set by the selected model (see `fit`)."""
    if state.best_model is None:
        return
    probs = ctx.predict_train(restore_best(ctx, method, state)).float()
    state.best_train_probs = probs
    if state.best_soft_labels is None:
        state.best_soft_labels = probs
    labeled = (ctx.train.targets >= 0).cpu()
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    if best is not None and bool(labeled.any()):
        agree = probs.argmax(1)[labeled] == ctx.train.targets.cpu()[labeled]
        best["train_acc_majority"] = float(agree.float().mean())


def label_drift(soft: torch.Tensor, targets: torch.Tensor) -> dict:
    """How far learned soft labels (N, K) moved from the majority labels (N,) (-1 = none): the fraction whose
    argmax changed, and the mean probability moved off the majority class."""
    labeled = targets >= 0
    if not bool(labeled.any()):
        return {}
    s, t = soft[labeled].float(), targets[labeled]
    return {"labels_changed": float((s.argmax(1) != t).float().mean()),
            "label_shift": float((1 - s[torch.arange(len(t)), t]).mean())}


def restore_best(ctx: TrainContext, method: Method, state: FitState) -> torch.nn.Module:
    """The selected model (a copy of the method's eval network with the best epoch's weights)."""
    model = copy.deepcopy(method.model_for_eval())
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
    return model.eval()
