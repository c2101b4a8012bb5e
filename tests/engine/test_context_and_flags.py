"""Seeded batching (resume-exact), the single-sample batch guard, and the flag rules."""

import numpy as np
import torch
from torch import nn

from engine.flags import flag_images
from engine.train.context import TensorData, TrainContext


def _ctx(n=17, batch=8, **kw):
    images = torch.randint(0, 255, (n, 3, 4, 4), dtype=torch.uint8)
    targets = torch.arange(n) % 3
    targets[0] = -1  # one unlabeled row
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    return TrainContext(model, 3, TensorData(images, targets), TensorData(images[:6], targets[1:7]),
                        (0.5,) * 3, (0.25,) * 3, batch_size=batch, seed=3, **kw)


def test_batches_are_a_function_of_seed_and_epoch():
    ctx = _ctx()
    a = [b.idx.tolist() for b in ctx.batches(2)]
    b = [b.idx.tolist() for b in ctx.batches(2)]
    c = [b.idx.tolist() for b in ctx.batches(3)]
    assert a == b and a != c
    seen = sorted(i for batch in a for i in batch)
    assert 0 not in seen  # unlabeled rows are skipped unless asked for
    assert len(seen) == 16 and len(set(seen)) == 16


def test_last_batch_of_one_image_is_dropped():
    ctx = _ctx(n=18, batch=8)  # 17 labelled rows = 2*8 + 1
    sizes = [len(b.y) for b in ctx.batches(0)]
    assert sizes == [8, 8] and ctx.steps_per_epoch() == 2
    sizes = [len(b.y) for b in ctx.batches(0, labeled_only=False)]
    assert sizes == [8, 8, 2]


def test_flips_and_normalisation():
    ctx = _ctx(n=9, batch=9)
    b = next(ctx.batches(0, labeled_only=False))
    raw = ctx.train.images[b.idx].float() / 255
    expect = torch.where(b.flip.view(-1, 1, 1, 1), raw.flip(-1), raw)
    torch.testing.assert_close(b.x, (expect - 0.5) / 0.25)
    assert 0 < int(b.flip.sum()) < 9
    assert not ctx.prepare(ctx.train.images[:2]).equal(ctx.prepare(ctx.train.images[:2], torch.tensor([True, True])))


def test_learning_rate_steps_at_milestones():
    ctx = _ctx(lr=1e-3, milestones=(10, 20))
    assert [round(ctx.lr_at(e), 9) for e in (0, 9, 10, 19, 20, 29)] == [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]


def test_flag_rules_and_reasons():
    classes = ["normal", "pre-plus", "plus"]
    probs = np.array([[0.9, 0.05, 0.05],   # agrees with a unanimous majority: not flagged
                      [0.2, 0.7, 0.1],     # suggests pre-plus, majority normal: flagged
                      [0.5, 0.4, 0.1],     # agrees, but split vote and uncertain: flagged
                      [0.1, 0.1, 0.8],     # agrees, tie resolved to plus: flagged
                      [0.3, 0.3, 0.4]])    # nobody graded: never flagged
    out = flag_images(probs, np.array([0, 0, 0, 2, -1]), consensus=np.array([True, False, False, False, False]),
                      tie=np.array([False, False, False, True, False]), classes=classes, uncertain=0.6)
    assert out["flag"].tolist() == [0, 1, 1, 1, 0]
    assert "model suggests pre-plus" in out["flag_reason"][1] and "majority said normal" in out["flag_reason"][1]
    assert "uncertain" in out["flag_reason"][2]
    assert "tied" in out["flag_reason"][3]
    assert out["flag_reason"][4] == "" and out["flag_reason"][0] == ""
    np.testing.assert_allclose(out["flag_score"][:4], [0.1, 0.8, 0.5, 0.2])
    assert out["suggested"].tolist() == ["normal", "pre-plus", "normal", "plus", "plus"]
