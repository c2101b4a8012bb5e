"""Seeded batching (resume-exact), the single-sample batch guard, and the flag rules."""

import numpy as np
import pytest
import torch
from torch import nn

from engine.flags import FLAG_CODES, flag_images
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


def test_flags_follow_the_posterior_and_carry_codes():
    classes = ["normal", "pre-plus", "plus"]
    post = np.array([[0.9, 0.05, 0.05],   # agrees with a unanimous majority: not flagged
                     [0.2, 0.7, 0.1],     # pre-plus likelier than the majority's normal: flagged, other_class
                     [0.45, 0.3, 0.25],   # majority still the likeliest, but more likely wrong than right
                     [0.3, 0.1, 0.6],     # a tie resolved to plus, p(plus) 0.6: in the queue only by its count
                     [0.3, 0.3, 0.4],     # nobody graded: never flagged
                     [0.1, 0.1, 0.8]])    # a meta row (known label): never flagged
    major = np.array([0, 0, 0, 2, -1, 0])
    out = flag_images(post, major, consensus=np.array([True, False, False, False, False, True]),
                      tie=np.array([False, False, False, True, False, False]), classes=classes,
                      known=np.array([False] * 5 + [True]))
    np.testing.assert_allclose(out["flag_score"], [0.1, 0.8, 0.55, 0.4, 0.0, 0.0])
    # expected wrong = 0.1 + 0.8 + 0.55 + 0.4 = 1.85 -> a queue of 2, plus every row with p(wrong) > 0.5
    assert out["flag"].tolist() == [0, 1, 1, 0, 0, 0]
    assert out["flag_code"].tolist() == ["", "other_class", "majority_doubtful", "", "", ""]
    assert "pre-plus is more likely" in out["flag_reason"][1]
    assert out["suggested"].tolist() == ["normal", "pre-plus", "normal", "plus", "plus", "plus"]
    assert set(c for codes in out["flag_code"] for c in codes.split(";") if c) <= set(FLAG_CODES)


def test_queue_is_as_long_as_the_expected_number_of_errors():
    rng = np.random.default_rng(0)
    post = rng.dirichlet([1, 1, 1], size=200)
    major = rng.integers(0, 3, 200)
    out = flag_images(post, major, consensus=np.zeros(200, bool), tie=np.zeros(200, bool), classes=list("abc"))
    expected = out["flag_score"].sum()
    assert out["flag"].sum() == max(round(expected), int((out["flag_score"] > 0.5).sum()))
    # the flagged rows are the highest-scoring ones
    assert out.loc[out["flag"] == 1, "flag_score"].min() >= out.loc[out["flag"] == 0, "flag_score"].max()


def test_secondary_codes_for_ties_and_disputed_consensus():
    post = np.array([[0.1, 0.1, 0.8], [0.05, 0.9, 0.05]])
    out = flag_images(post, np.array([0, 2]), consensus=np.array([True, False]), tie=np.array([False, True]),
                      classes=["normal", "pre-plus", "plus"])
    assert out["flag_code"].tolist() == ["other_class;consensus_disputed", "other_class;tie"]


def test_cross_entropy_trains_on_the_vote_shares_when_the_data_carries_them():
    from engine.losses import cross_entropy, soft_cross_entropy
    from engine.train.steps import hard_label_step

    images = torch.randint(0, 255, (8, 3, 4, 4), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    shares = torch.full((8, 3), 1 / 3)  # every row a three-way split
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    losses = {}
    for name, soft in (("votes", shares), ("majority", None)):
        ctx = TrainContext(model, 3, TensorData(images, targets, soft), TensorData(images[:3], targets[:3]),
                           (0.5,) * 3, (0.25,) * 3, batch_size=8, seed=0, lr=0.0)
        b = next(ctx.batches(0, augment=False))
        assert (b.soft is None) == (soft is None)
        losses[name] = float(hard_label_step(ctx, model, ctx.optimizer, b))
        logits = model(b.x)
        want = soft_cross_entropy(logits, b.soft) if soft is not None else cross_entropy(logits, b.y)
        assert losses[name] == pytest.approx(float(want), rel=1e-5)
    assert losses["votes"] != pytest.approx(losses["majority"])
    sub = TensorData(images, targets, shares).subset(np.array([1, 3]))
    assert sub.soft.shape == (2, 3) and sub.targets.tolist() == [1, 0]
