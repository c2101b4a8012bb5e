"""`mslg` / `metalabelnet`: the classification loss is KL(prediction ‖ label) at the authors' scale, confident
(K·onehot) labels still receive the full meta-gradient, and on flipped labels the soft labels move to the truth."""

import contextlib
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from engine.losses import entropy, kl_prediction_to_label
from engine.meta import lookahead_surrogate
from engine.methods.mslg import label_lr
from engine.methods.soft_label_step import LookaheadCheck, classification_loss, soft_label_meta_step
from engine.train.loop import fit


def test_kl_prediction_to_label_is_kl_of_the_prediction_from_the_label():
    torch.manual_seed(0)
    logits, z = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64) * 3
    label_logp, logp = F.log_softmax(z, 1), F.log_softmax(logits, 1)
    # torch's kl_div(input, target) = Σ target·(log target − input): KL(target ‖ exp(input)), here KL(p ‖ label)
    expected = F.kl_div(label_logp, logp, log_target=True, reduction="batchmean")
    torch.testing.assert_close(kl_prediction_to_label(logits, label_logp), expected)
    # not symmetric: the other direction (label first) is a different number
    assert not torch.isclose(expected, F.kl_div(logp, label_logp, log_target=True, reduction="batchmean"))
    # the authors' scale: mean over batch × classes
    torch.testing.assert_close(classification_loss(logits, label_logp), expected / 4)


def test_kl_plus_entropy_is_the_expected_negative_log_label():
    """KL(p ‖ t) + H(p) = −Σ p log t: why the paper's real update (eq. 4, γ=1) never rewards a flat prediction."""
    torch.manual_seed(1)
    logits, label_logp = torch.randn(6, 3), F.log_softmax(torch.randn(6, 3) * 4, 1)
    lhs = kl_prediction_to_label(logits, label_logp) + entropy(logits)
    torch.testing.assert_close(lhs, -(logits.softmax(1) * label_logp).sum(1).mean())


def test_confident_labels_receive_a_full_meta_gradient(tiny_net):
    """The label-variable gradient does not pass through the label's own softmax: at K=10 it is as large as at K=1
    (they differ only through the look-ahead point θ'). With the other KL direction it is scaled by the label
    softmax's Jacobian (≈ 4.5e-4 at K=10) and labels initialised at K·onehot never move.
    """
    torch.manual_seed(0)
    model = tiny_net().double()
    x, mx = torch.randn(6, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    my, y = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 2, 1, 0])
    grads = []
    for k in (1.0, 10.0):
        z = (F.one_hot(y, 3).double() * k).requires_grad_()
        s, _ = lookahead_surrogate(model, x=x, logits=model(x), targets=F.log_softmax(z, 1),
                                   loss_fn=classification_loss, meta_x=mx, meta_y=my, lr=0.5)
        grads.append(torch.autograd.grad(s, z)[0])
    assert grads[0].abs().max() > 1e-6
    assert 0.5 < float(grads[1].norm() / grads[0].norm()) < 2.0


def test_label_lr_keeps_the_papers_per_sample_step():
    """β'/(B·K) (our per-sample step on a batch × classes mean) equals β/(128·10) for any batch and class count."""
    for b, k in [(128, 10), (16, 3), (32, 4)]:
        assert label_lr(4000.0, b, k) / (b * k) == pytest.approx(4000.0 / 1280)


@pytest.mark.parametrize(("name", "params"), [("mslg", {"beta": 4e5}), ("metalabelnet", {})])
def test_soft_labels_of_flipped_rows_move_to_the_true_class(make_ctx, build, name, params):
    # MSLG's label step scales with the model's Jacobian; this 8-channel net needs a larger β than a ResNet
    ctx = make_ctx(n=96, n_meta=24, noise=0.25, epochs=8, warmup=2, lr=0.05)
    method = build(name, ctx, **params)
    state = fit(ctx, method)
    soft = method.soft_labels().numpy()
    flipped, truth, noisy = ctx.flipped, ctx.true_labels, ctx.train.targets.numpy()
    lead = soft.argmax(1)
    left = flipped & (lead != noisy)  # flipped rows whose soft label no longer leads with the wrong label
    # they start on the wrong class (MSLG: p[true] ≈ 5e-5 at K=10); a third or more leave it, and for the truth
    assert left.sum() >= flipped.sum() / 3, soft[flipped]
    assert (lead[left] == truth[left]).mean() >= 0.8
    assert (lead[~flipped] == truth[~flipped]).mean() >= 0.9  # correctly labelled rows stay
    np.testing.assert_allclose(soft.sum(1), 1, atol=1e-5)
    assert state.best_meta_acc >= 0.9


def _unrolled_meta_loss(model, x, z, mx, my, alpha, entropy_weight):
    """L_meta(θ − α ∇θ[KL(f ‖ softmax z)/K + γ·H(f)/K]) by explicit copy-and-update with create_graph."""
    params = dict(model.named_parameters())
    buffers = {n: t.clone() for n, t in model.named_buffers()}
    logits = functional_call(model, {**params, **buffers}, (x,))
    loss = classification_loss(logits, F.log_softmax(z, 1)) + entropy_weight * entropy(logits) / logits.shape[1]
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    new = {n: p - alpha * g for (n, p), g in zip(params.items(), grads, strict=True)}
    buffers = {n: t.clone() for n, t in model.named_buffers()}
    return F.cross_entropy(functional_call(model, {**new, **buffers}, (mx,)), my)


def test_same_pass_real_update_and_meta_gradient(tiny_net):
    """`real_update="same-pass"`: the real update is one SGD step on the loss with the labels from before the meta
    update, and the label gradient is the unrolled one for a virtual step on that same loss (entropy included)."""
    torch.manual_seed(0)
    model = tiny_net().double()
    ref = copy.deepcopy(model)
    x, mx = torch.randn(6, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    my = torch.tensor([0, 1, 2, 1])
    z = (torch.randn(6, 3, dtype=torch.float64) * 3).requires_grad_()
    alpha, gamma, lr = 0.5, 1.0, 0.1
    ctx = SimpleNamespace(model=model, autocast=contextlib.nullcontext,
                          optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    expected = torch.autograd.grad(_unrolled_meta_loss(ref, x, z, mx, my, alpha, gamma), z)[0]
    surrogate, _, finish = soft_label_meta_step(
        ctx, SimpleNamespace(x=x), SimpleNamespace(x=mx, y=my), lambda: F.log_softmax(z, 1), check=LookaheadCheck(alpha, steps_left=0),
        entropy_weight=gamma, real_update="same-pass")
    torch.testing.assert_close(torch.autograd.grad(surrogate, z)[0], expected, rtol=1e-6, atol=1e-10)
    finish(F.log_softmax(z.detach() + 5.0 * torch.randn_like(z), 1))  # new labels: not used by this update
    ref_logits = ref(x)
    ref_loss = classification_loss(ref_logits, F.log_softmax(z.detach(), 1)) + gamma * entropy(ref_logits) / 3
    ref_loss.backward()
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q - lr * q.grad, rtol=1e-9, atol=1e-12)


def test_lookahead_check_lowers_alpha_only_when_the_lookahead_breaks_the_model():
    check = LookaheadCheck(0.5, steps_left=3)
    assert check.accept(1.2, 1.0) and check.alpha == 0.5 and check.steps_left == 2  # a normal look-ahead
    assert not check.accept(7.4, 0.9) and check.alpha == 0.05  # 8× worse: redo the step with α/10
    assert not check.accept(float("nan"), 0.9) and check.alpha == pytest.approx(0.005)
    assert not check.accept(5.0, 1.0) and check.backoffs == 3
    assert check.accept(5.0, 1.0) and check.alpha == pytest.approx(5e-4)  # at most 3 back-offs, then go on
    stats = check.epoch_stats(0, "--mslg-alpha")
    assert stats["alpha"] == pytest.approx(5e-4) and "--mslg-alpha" in stats["notes"][0]
    assert "notes" not in check.epoch_stats(3, "--mslg-alpha")


@pytest.mark.parametrize("name", ["mslg", "metalabelnet"])
def test_a_huge_alpha_is_lowered_and_logged_and_survives_resume(make_ctx, build, name):
    ctx = make_ctx(epochs=3, warmup=1)
    method = build(name, ctx, alpha=1e4)
    state = fit(ctx, method)
    first_main = state.history[1]
    assert first_main["alpha"] < 1e4 and "lowered" in first_main["notes"][0]
    assert "notes" not in state.history[2]  # noted once, in the epoch it happened
    restored = build(name, make_ctx(epochs=3, warmup=1), alpha=1e4)
    restored.load_state_dict(method.state_dict())
    assert restored.check == method.check
    default = build(name, make_ctx(epochs=2, warmup=1))
    fit(default.ctx, default)
    assert default.check.alpha == 0.5 and default.check.backoffs == 0
