"""The look-ahead meta-gradient against independent computations on a tiny model."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from engine.losses import kl_prediction_to_label
from engine.meta import lookahead_surrogate


class Tiny(nn.Module):
    """conv + BatchNorm + linear: small, but with the parts (BN batch stats) that make meta-gradients tricky."""

    def __init__(self, k=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, k)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.mean((2, 3)))


def _setup(seed=0):
    torch.manual_seed(seed)
    model = Tiny().double()
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    mx = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    my = torch.tensor([0, 1, 2, 1])
    z = (torch.randn(6, 3, dtype=torch.float64) * 2).requires_grad_()  # MSLG-style label variables
    return model, x, mx, my, z


def _unrolled_meta_loss(model, x, z, mx, my, lr):
    """Explicit copy-and-update with create_graph: L_meta(θ − lr ∇_θ L(θ, softmax(z)))."""
    params = dict(model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    logits = functional_call(model, {**params, **buffers}, (x,))
    loss = kl_prediction_to_label(logits, torch.log_softmax(z, 1))
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    new = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    meta_logits = functional_call(model, {**new, **{n: b.clone() for n, b in model.named_buffers()}}, (mx,))
    return nn.functional.cross_entropy(meta_logits, my)


@pytest.mark.parametrize("lr", [0.5, 0.05])
def test_surrogate_gradient_matches_unrolled_second_order(lr):
    model, x, mx, my, z = _setup()
    expected = torch.autograd.grad(_unrolled_meta_loss(model, x, z, mx, my, lr), z)[0]

    logits = model(x)
    surrogate, info = lookahead_surrogate(model, x=x, logits=logits, targets=torch.log_softmax(z, 1),
                                          loss_fn=kl_prediction_to_label, meta_x=mx, meta_y=my, lr=lr)
    got = torch.autograd.grad(surrogate, z)[0]
    assert expected.abs().max() > 1e-6  # the check is not vacuous
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    assert info["meta_loss"] > 0


def test_surrogate_gradient_matches_finite_differences():
    model, x, mx, my, z = _setup(1)
    lr = 0.3
    logits = model(x)
    surrogate, _ = lookahead_surrogate(model, x=x, logits=logits, targets=torch.log_softmax(z, 1),
                                       loss_fn=kl_prediction_to_label, meta_x=mx, meta_y=my, lr=lr)
    got = torch.autograd.grad(surrogate, z)[0]
    eps = 1e-6
    fd = torch.zeros_like(z)
    with torch.no_grad():
        for i in range(z.shape[0]):
            for k in range(z.shape[1]):
                zp, zm = z.detach().clone(), z.detach().clone()
                zp[i, k] += eps
                zm[i, k] -= eps
                fd[i, k] = (_meta_loss_plain(model, x, zp, mx, my, lr) - _meta_loss_plain(model, x, zm, mx, my, lr)) / (2 * eps)
    torch.testing.assert_close(got, fd, rtol=1e-4, atol=1e-8)


def _meta_loss_plain(model, x, z, mx, my, lr):
    """Independent of autograd-through-autograd: copy the model, take a real SGD step, evaluate the meta loss."""
    m = copy.deepcopy(model)
    with torch.enable_grad():
        loss = kl_prediction_to_label(m(x), torch.log_softmax(z, 1))
        grads = torch.autograd.grad(loss, list(m.parameters()))
    with torch.no_grad():
        for p, g in zip(m.parameters(), grads, strict=True):
            p -= lr * g
        m.load_state_dict({**m.state_dict(), **{n: b for n, b in model.named_buffers()}})
        return nn.functional.cross_entropy(m(mx), my)


def test_virtual_step_leaves_batchnorm_running_stats_and_weights_unchanged():
    model, x, mx, my, z = _setup(2)
    logits = model(x)  # the one real forward updates running stats once
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lookahead_surrogate(model, x=x, logits=logits, targets=torch.log_softmax(z, 1), loss_fn=kl_prediction_to_label,
                        meta_x=mx, meta_y=my, lr=0.5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_finite_difference_jvp_approximates_the_exact_meta_gradient():
    torch.manual_seed(3)
    model = Tiny()  # float32, as the finite-difference mode requires
    x, mx = torch.randn(6, 3, 5, 5), torch.randn(4, 3, 5, 5)
    my = torch.tensor([0, 1, 2, 1])
    z = (torch.randn(6, 3) * 2).requires_grad_()
    grads = {}
    for mode in ("exact", "finite-difference"):
        s, _ = lookahead_surrogate(model, x=x, logits=model(x), targets=torch.log_softmax(z, 1), loss_fn=kl_prediction_to_label,
                                   meta_x=mx, meta_y=my, lr=0.5, jvp_mode=mode)
        grads[mode] = torch.autograd.grad(s, z)[0]
    exact, approx = grads["exact"], grads["finite-difference"]
    cos = torch.nn.functional.cosine_similarity(exact.flatten(), approx.flatten(), dim=0)
    assert cos > 0.99
    torch.testing.assert_close(approx, exact, rtol=0.1, atol=0.05 * float(exact.abs().max()))
    with pytest.raises(ValueError, match="jvp_mode"):
        lookahead_surrogate(model, x=x, logits=model(x), targets=torch.log_softmax(z, 1), loss_fn=kl_prediction_to_label,
                            meta_x=mx, meta_y=my, lr=0.5, jvp_mode="guess")
