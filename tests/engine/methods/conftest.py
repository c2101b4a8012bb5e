"""Fixtures for the method tests: a tiny timm-like network, a seeded separable image set with flipped labels, and
a resume check (uninterrupted run vs. checkpoint → fresh objects → resumed run)."""

from __future__ import annotations

import copy
import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from engine.methods import get_method
from engine.safe_load import torch_load
from engine.train.context import TensorData, TrainContext
from engine.train.loop import FitState, fit

K = 3


class TinyNet(nn.Module):
    """conv + BatchNorm + pooled linear head with timm's interface (forward_features / forward_head(pre_logits))."""

    def __init__(self, k: int = K, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, k)
        self.num_features = width

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(x)))

    def forward_head(self, x, pre_logits: bool = False):
        h = x.mean((2, 3))
        return h if pre_logits else self.fc(h)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@pytest.fixture
def tiny_net():
    """The TinyNet class (timm-like: forward_features / forward_head(pre_logits) / get_classifier / num_features)."""
    return TinyNet


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 8, 8) uint8 noise images whose class (0..K-1) is the brightest channel (linearly separable), labels."""
    y = rng.integers(0, K, n)
    x = rng.integers(0, 110, (n, 3, 8, 8))
    x[np.arange(n), y] += 120
    return x.astype(np.uint8), y


def flip_labels(y: np.ndarray, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Move exactly round(frac·n) labels to another class; returns (noisy labels, flipped mask)."""
    flipped = np.zeros(len(y), dtype=bool)
    flipped[rng.choice(len(y), round(frac * len(y)), replace=False)] = True
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, K, int(flipped.sum()))) % K
    return noisy, flipped


@pytest.fixture
def make_ctx():
    """make_ctx(n=96, n_meta=24, noise=0.2, epochs=3, warmup=1, lr=0.05, device="cpu", ...) -> TrainContext.

    The context also carries the test's ground truth: `ctx.true_labels` and `ctx.flipped` (numpy, per train row).
    """

    def make(*, n=96, n_meta=24, noise=0.2, epochs=3, warmup=1, lr=0.05, batch_size=16, seed=0, model_seed=0,
             unlabeled=0, device="cpu", **kw) -> TrainContext:
        rng = np.random.default_rng(seed)
        x, y = make_images(n, rng)
        noisy, flipped = flip_labels(y, noise, rng)
        if unlabeled:
            noisy[-unlabeled:] = -1  # rows nobody graded
        mx, my = make_images(n_meta, rng)
        torch.manual_seed(model_seed)
        ctx = TrainContext(TinyNet(), K, TensorData(x, noisy), TensorData(mx, my), mean=(0.35,) * 3, std=(0.25,) * 3,
                           device=device, batch_size=batch_size, seed=seed, epochs=epochs, warmup_epochs=warmup,
                           lr=lr, milestones=(), amp=False, **kw)
        ctx.true_labels, ctx.flipped = y, flipped
        return ctx

    return make


def _build(name: str, ctx: TrainContext, **params):
    cls = get_method(name)
    return cls(replace(cls.config_cls(), **params), ctx)


@pytest.fixture
def build():
    """build(name, ctx, **params) -> the registered method with its default config updated by `params`."""
    return _build


def _roundtrip(obj):
    """What the pipeline's checkpoint does to a state: torch.save then torch.load."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch_load(buf)  # as engine/pipeline.py loads it: tensors and plain data only


@pytest.fixture
def check_resume(make_ctx):
    """check_resume(name, params, split_after=e, **ctx_kw): checkpoint after epoch e (model, optimiser, method,
    FitState, as engine/pipeline.py saves them), load into fresh objects, finish, and compare with the
    uninterrupted run: same final weights, same history after e, same soft labels and flag scores."""

    def run(name: str, params: dict, *, split_after: int, **ctx_kw):
        ctx1 = make_ctx(**ctx_kw)
        m1 = _build(name, ctx1, **params)
        snap = {}

        def save(st: FitState) -> None:
            if st.epoch == split_after:
                snap.update(_roundtrip({"model": ctx1.model.state_dict(), "optimizer": ctx1.optimizer.state_dict(),
                                        "method": m1.state_dict() if st.started else {},
                                        "fit": copy.deepcopy(st.to_dict())}))

        s1 = fit(ctx1, m1, on_epoch_end=save)
        assert snap, f"no checkpoint after epoch {split_after}"
        ctx2 = make_ctx(model_seed=123, **ctx_kw)  # a differently initialised network: everything must come from the checkpoint
        m2 = _build(name, ctx2, **params)
        ctx2.model.load_state_dict(snap["model"])
        ctx2.optimizer.load_state_dict(snap["optimizer"])
        state = FitState.from_dict(snap["fit"])
        if state.started:
            m2.load_state_dict(snap["method"])
        s2 = fit(ctx2, m2, state=state)
        for (k, a), b in zip(ctx1.model.state_dict().items(), ctx2.model.state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"weight {k} differs after resume")
        for h1, h2 in zip(s1.history[split_after + 1:], s2.history[split_after + 1:], strict=True):
            assert h1["loss"] == h2["loss"] and h1["meta_acc"] == h2["meta_acc"], (h1, h2)
        torch.testing.assert_close(s2.best_soft_labels, s1.best_soft_labels, rtol=0, atol=0)
        assert (s1.best_flag_scores is None) == (s2.best_flag_scores is None)
        if s1.best_flag_scores is not None:
            np.testing.assert_array_equal(s2.best_flag_scores, s1.best_flag_scores)
        return s1, s2, m1, m2

    return run
