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
    best_soft_labels: torch.Tensor | None = None  # (N_train, K) at the best epoch
    best_flag_scores: np.ndarray | None = None
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
        if warm:
            stats = ce_epoch(ctx, epoch, stage="warmup")
        else:
            if not state.started:
                method.start()
                state.started = True
            stats = method.train_epoch(epoch)
        model = method.model_for_eval()
        meta_acc = ctx.accuracy(ctx.meta, model)
        record = {"epoch": epoch, "stage": stage, "lr": lr, **stats, "meta_acc": meta_acc,
                  "test_acc": ctx.accuracy(ctx.test, model) if ctx.test is not None else None,
                  "train_acc_majority": ctx.accuracy(ctx.train, model), "seconds": time.time() - t0}
        if state.started and method.learns_labels:
            record.update(label_drift(method.soft_labels(), ctx.train.targets.cpu()))
        state.history.append(record)
        # Candidates: the main-phase epochs and the warm-up's last epoch, so a main phase that only hurts the
        # meta accuracy falls back to the warm-up model instead of keeping its least bad epoch.
        last_warm = epoch == min(ctx.warmup_epochs, ctx.epochs) - 1
        selectable = (last_warm or not warm) and (
            warm or getattr(method, "selectable", lambda: True)())  # e.g. O2U: not during its cyclical stage
        better = meta_acc > state.best_meta_acc or (meta_acc == state.best_meta_acc and not warm)  # ties: the method
        if selectable and (better or state.best_model is None):
            state.best_epoch, state.best_meta_acc = epoch, meta_acc
            state.best_model = _cpu_state(model)
            soft = method.soft_labels() if state.started else ctx.predict_train(model)
            assert soft.shape == (n_train, ctx.num_classes), soft.shape
            state.best_soft_labels = soft.float().cpu()
            scores = method.flag_scores() if state.started else None
            state.best_flag_scores = None if scores is None else np.asarray(scores, dtype=float)
        state.epoch = epoch
        if on_epoch_end:
            on_epoch_end(state)
    return state


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
