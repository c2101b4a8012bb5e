"""Cross-fitting (engine/crossfit.py): every out-of-sample probability comes from a network that never saw that
image's label, every row gets one, and the fold schedule keeps the stage within its budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.crossfit as cf
from engine.crossfit import assign_folds, crossfit, fold_schedule
from engine.train.context import TensorData, TrainContext

K = 3


def _encoded(n: int, labels: np.ndarray) -> TensorData:
    """Images whose first pixel holds the row number (so a network can 'memorise' rows)."""
    img = np.zeros((n, 4, 4, 3), np.uint8)
    img[:, 0, 0, 0], img[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return TensorData(img, labels)


def _key(lo, hi, is_meta) -> torch.Tensor:
    """Row identity from the first pixel's channels: number + 100000 for meta rows."""
    return (torch.as_tensor(lo).round().long() + 256 * torch.as_tensor(hi).round().long() +
            100_000 * torch.as_tensor(is_meta).round().long())


class Memoriser(torch.nn.Module):
    """Predicts one-hot(label) for every row it trained on, uniform for every other row."""

    def __init__(self, seen: dict[int, int]):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        rows = _key(x[:, 0, 0, 0] * 255, x[:, 1, 0, 0] * 255, x[:, 2, 0, 0] * 255)
        out = torch.zeros(len(x), K)
        for j, r in enumerate(rows.tolist()):
            if r in self.seen:
                out[j, self.seen[r]] = 50.0
        return out


def test_out_of_sample_probabilities_never_come_from_a_network_that_saw_the_label(monkeypatch):
    rng = np.random.default_rng(0)
    n_train, n_meta = 60, 12
    train_y = rng.integers(-1, K, n_train)  # -1 = unlabelled rows take part too
    meta_y = np.repeat(np.arange(K), n_meta // K)
    train, meta = _encoded(n_train, train_y), _encoded(n_meta, meta_y)
    meta.images[:, 2, 0, 0] = 1  # (N, C, H, W): tell meta rows apart from training rows with the same number
    trained_on: dict[int, set] = {}

    def fake_fit(ctx, method, **kw):
        return None

    def fake_restore(ctx, method, state):
        seen = {}
        for data in (ctx.train, ctx.meta):
            keys = _key(data.images[:, 0, 0, 0].float(), data.images[:, 1, 0, 0].float(),
                        data.images[:, 2, 0, 0].float())
            seen.update({int(r): int(y) for r, y in zip(keys, data.targets, strict=True) if int(y) >= 0})
        trained_on[ctx.seed] = set(seen)
        return Memoriser(seen)

    monkeypatch.setattr(cf, "fit", fake_fit)
    monkeypatch.setattr(cf, "restore_best", fake_restore)

    def make_ctx(part_train, part_meta, fold):
        return TrainContext(torch.nn.Linear(1, 1), K, part_train, part_meta, (0.0,) * 3, (1.0,) * 3, seed=fold)

    res = crossfit(make_ctx, lambda cfg, ctx: None, None, train, meta, k=3, seed=0)
    # every row has a prediction, and none is a memorised one-hot: all are uniform
    np.testing.assert_allclose(res.train_probs, np.full((n_train, K), 1 / K), atol=1e-6)
    np.testing.assert_allclose(res.meta_probs, np.full((n_meta, K), 1 / K), atol=1e-6)
    assert len(trained_on) == 3 and all(trained_on.values())
    for f in range(3):
        held_out = {int(i) for i in np.flatnonzero(res.train_folds == f)}
        held_out |= {100_000 + int(i) for i in np.flatnonzero(res.meta_folds == f)}
        assert not held_out & trained_on[f]
    # the same networks, evaluated on their own training rows, do memorise (so the check above could fail)
    own = sorted(r for r in trained_on[0] if r < 100_000)[:5]
    mem = Memoriser({r: 1 for r in own})
    x = torch.zeros(5, 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor([r % 256 for r in own]) / 255
    x[:, 1, 0, 0] = torch.tensor([r // 256 for r in own]) / 255
    assert (mem(x).argmax(1) == 1).all() and len(own) == 5


def test_folds_are_stratified_and_cover_every_row():
    labels = np.r_[np.zeros(30), np.ones(9), np.full(5, 2), np.full(4, -1)].astype(int)
    folds = assign_folds(labels, 3, seed=1)
    assert set(folds) == {0, 1, 2}
    for c in (0, 1, 2, -1):
        counts = np.bincount(folds[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, assign_folds(labels, 3, seed=1))  # seeded
    assert not np.array_equal(folds, assign_folds(labels, 3, seed=2))


@pytest.mark.parametrize("k,budget", [(2, 1.0), (3, 1.0), (4, 0.5), (2, 0.6)])
def test_fold_schedule_stays_within_the_budget(k, budget):
    fs = fold_schedule(15, 5, (10,), k=k, budget=budget)
    cost = k * (k - 1) / k * fs.epochs / 15  # k networks on (k-1)/k of the rows, relative to the main run
    assert cost <= budget + 1e-9
    assert 0 <= fs.warmup_epochs < fs.epochs or fs.epochs == 1
    assert all(0 < m < fs.epochs for m in fs.milestones)


def test_one_fold_is_refused():
    with pytest.raises(ValueError, match="at least 2 folds"):
        crossfit(None, None, None, _encoded(4, np.zeros(4, int)), _encoded(2, np.zeros(2, int)), k=1, seed=0)
