"""`o2u` and `o2u-apl`: cyclical schedule, epoch split, ranking of known-noisy rows, retraining, resume."""

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.methods.o2u import cyclical_lr, plan_epochs
from engine.train.loop import fit


def test_cyclical_lr_falls_linearly_and_jumps_back_at_cycle_boundaries():
    # the paper's setting: c = 10, r1 = 0.01, r2 = 0.001
    lrs = [cyclical_lr(t, c=10, r1=0.01, r2=0.001) for t in range(1, 21)]
    assert lrs[0] == pytest.approx(0.0091)  # t=1: s = 1/10
    assert lrs[9] == pytest.approx(0.001) and lrs[19] == pytest.approx(0.001)  # end of each cycle: r2
    assert lrs[10] == pytest.approx(0.0091)  # t = c+1 jumps back up
    assert all(a > b for a, b in zip(lrs[:9], lrs[1:10], strict=True))  # strictly falling within a cycle
    assert np.allclose(np.diff(lrs[:10]), -0.0009)  # linearly
    assert lrs[:10] == pytest.approx(lrs[10:])
    assert [cyclical_lr(t, c=3, r1=1.0, r2=0.1) for t in (1, 2, 3, 4)] == pytest.approx([0.7, 0.4, 0.1, 0.7])


def test_epoch_split_defaults_and_overrides():
    assert plan_epochs(20) == (6, 3)  # ROP schedule: 30 − 10 warm-up; 2/7 cyclical (paper 20 of 70), two cycles
    assert plan_epochs(70) == (20, 10)  # the paper's own split after pre-training: 20 cyclical, c = 10
    assert plan_epochs(2) == (1, 1)  # always leaves a retraining epoch
    assert plan_epochs(7) == (2, 2) and plan_epochs(11) == (3, 2)  # a cycle spans at least 2 epochs
    assert plan_epochs(20, 8, 4) == (8, 4)


def test_o2u_rejects_a_split_without_retraining(make_ctx, build):
    with pytest.raises(InputError, match="cyclical_epochs=5 leaves no retraining epoch"):
        build("o2u", make_ctx(epochs=6, warmup=1), cyclical_epochs=5)
    with pytest.raises(InputError, match="forget_rate"):
        build("o2u", make_ctx(), forget_rate=1.5)


def test_flipped_rows_rank_on_top_and_retraining_leaves_them_out(make_ctx, build, monkeypatch):
    ctx = make_ctx(n=100, noise=0.2, epochs=8, warmup=2, lr=0.05)
    method = build("o2u", ctx, cyclical_epochs=4, cycle_length=2)
    pretrained, retrain_idx = {}, []

    def on_epoch_end(state):
        if state.epoch == ctx.warmup_epochs - 1:
            pretrained.update({k: v.clone() for k, v in ctx.model.state_dict().items()})
        if state.epoch == ctx.warmup_epochs + 3:  # the last cyclical epoch restored the pre-trained model
            for k, v in ctx.model.state_dict().items():
                torch.testing.assert_close(v, pretrained[k], rtol=0, atol=0)

    real_batches = ctx.batches

    def spy(epoch, **kw):
        for b in real_batches(epoch, **kw):
            if getattr(method, "stage", None) == "retrain":
                retrain_idx.append(b.idx)
            yield b

    monkeypatch.setattr(ctx, "batches", spy)
    state = fit(ctx, method, on_epoch_end=on_epoch_end)

    flipped = ctx.flipped
    assert method.noise_estimate == pytest.approx(flipped.mean(), abs=0.1)  # warm-up model disagreement ≈ 20%
    assert method.forget_rate == method.noise_estimate
    score = method.flag_scores()
    top = np.argsort(-score)[: int(flipped.sum())]
    assert flipped[top].mean() >= 0.75, f"only {flipped[top].mean():.2f} of the top-ranked rows are flipped"
    forgotten = ~method.keep.numpy()
    assert forgotten.sum() == round(100 * method.forget_rate) == flipped.sum()  # estimate = 20% exactly here
    assert flipped[forgotten].mean() >= 0.75
    seen = torch.cat(retrain_idx).unique().numpy()
    assert len(seen) == int(method.keep.sum()) and not forgotten[seen].any()
    retrain = [h for h in state.history if h["epoch"] >= ctx.warmup_epochs + 4]
    assert [h["lr"] for h in retrain] == [ctx.lr] * 2  # no milestones: retraining replays the constant lr
    cyc = [h["lr"] for h in state.history if ctx.warmup_epochs <= h["epoch"] < ctx.warmup_epochs + 4]
    assert cyc == pytest.approx([0.55 * ctx.lr, 0.1 * ctx.lr] * 2)


def test_forget_rate_from_split_votes_and_eval_model_is_pretrained(make_ctx, build):
    ctx = make_ctx(n=100, epochs=5, warmup=2)
    split = ctx.flipped.copy()
    split[np.flatnonzero(~ctx.flipped)[:10]] = True  # every flipped row and 10 correct ones had split votes
    ctx.train_consensus = torch.as_tensor(~split)
    method = build("o2u", ctx, cyclical_epochs=2)
    fit(ctx, method)  # warm-up, 2 cyclical, 1 retraining
    # split-vote rows the warm-up model disagrees with: the 20 flipped ones, not the 10 correct ones (30% split)
    assert method.noise_estimate == pytest.approx(0.2, abs=0.03) and method.n_forgotten == round(100 * method.forget_rate)
    ctx2 = make_ctx(n=60, epochs=4, warmup=1)
    m2 = build("o2u", ctx2, cyclical_epochs=2, forget_rate=0.1)
    ctx2.epochs = 2  # stop after the first of the two cyclical epochs
    fit(ctx2, m2)
    assert m2.stage == "cyclical" and m2.model_for_eval() is not ctx2.model
    for k, v in m2.model_for_eval().state_dict().items():
        torch.testing.assert_close(v, m2.pretrained["model"][k], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["o2u", "o2u-apl"])
def test_fit_returns_soft_labels_and_flag_scores(make_ctx, build, name):
    ctx = make_ctx(n=64, epochs=4, warmup=1, unlabeled=4)
    method = build(name, ctx, cyclical_epochs=2)
    state = fit(ctx, method)
    soft = method.soft_labels()  # the method's own output (selection may keep the warm-up model)
    assert soft.shape == (64, 3)
    torch.testing.assert_close(soft.sum(1), torch.ones(64))
    scores = method.flag_scores()
    assert scores.shape == (64,) and np.isfinite(scores).all()
    stages = [h.get("forgotten") for h in state.history]
    assert stages[2] is not None and stages[2] > 0  # the switch to retraining is logged


def test_o2u_apl_retrains_with_nce_rce_and_clipping(make_ctx, build, monkeypatch):
    from engine.losses import nce_rce

    ctx = make_ctx(n=48, epochs=3, warmup=1)
    method = build("o2u-apl", ctx, cyclical_epochs=1, alpha=2.0, beta=0.5)
    clips = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, c: clips.append(c) or real(p, c))
    fit(ctx, method)
    assert clips and set(clips) == {5.0}  # retraining stage only, at APL's 5
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(method.retrain_loss(logits, y), nce_rce(logits, y, alpha=2.0, beta=0.5))


@pytest.mark.parametrize("split_after", [2, 3, 4])  # inside the cyclical stage, at the switch, inside retraining
def test_o2u_resume(check_resume, split_after):
    s1, s2, m1, m2 = check_resume("o2u", {"cyclical_epochs": 2}, split_after=split_after, epochs=6, warmup=2)
    assert m2.stage == "retrain"
    np.testing.assert_array_equal(m1.keep.numpy(), m2.keep.numpy())
    torch.testing.assert_close(m2.loss_sum, m1.loss_sum, rtol=0, atol=0)


def test_o2u_apl_resume(check_resume):
    check_resume("o2u-apl", {"cyclical_epochs": 1}, split_after=1, epochs=4, warmup=1)


def test_retraining_skips_a_last_batch_of_one_image(make_ctx, build, monkeypatch):
    import engine.methods.o2u as o2u_module

    ctx = make_ctx(n=66, epochs=3, warmup=1)
    method = build("o2u", ctx, cyclical_epochs=1, forget_rate=1 / 66)  # keeps 65 rows = 4 × 16 + 1
    sizes = []
    real = o2u_module.hard_label_step
    monkeypatch.setattr(o2u_module, "hard_label_step", lambda ctx, m, o, b, **kw: sizes.append(len(b.y)) or real(ctx, m, o, b, **kw))
    fit(ctx, method)
    assert int(method.keep.sum()) == 65 and sizes == [16, 16, 16, 16]  # BatchNorm cannot train on one image
