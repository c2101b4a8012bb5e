"""The look-ahead meta-gradient against independent computations on a tiny model."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

from engine.losses import kl_prediction_to_label
from engine.meta import first_order_gradient, forward_with_jvp, frozen_norm_stats, lookahead_surrogate, surrogate


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


# --- first-order look-ahead: g at θ, u from the training forward itself ------------------------------------------


def _first_order_reference(model, x, z, mx, my, lr):
    """Independent: −lr ⟨∇_θ L(θ, z), ∇_θ L_meta(θ)⟩ with second-order autograd (create_graph), its gradient in z."""
    params = list(model.parameters())
    m = copy.deepcopy(model)  # the meta gradient on a copy: no shared graph, running stats of `model` untouched
    g = torch.autograd.grad(nn.functional.cross_entropy(m(mx), my), list(m.parameters()))
    loss = kl_prediction_to_label(model(x), torch.log_softmax(z, 1))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return torch.autograd.grad(-lr * sum((a * b).sum() for a, b in zip(grads, g, strict=True)), z)[0]


def _first_order(model, x, z, mx, my, lr):
    g, meta_loss = first_order_gradient(model, mx, my)
    logits, u = forward_with_jvp(model, x, g)
    s = surrogate(logits, torch.log_softmax(z, 1), kl_prediction_to_label, u, lr)
    return torch.autograd.grad(s, z)[0], logits, meta_loss


@pytest.mark.parametrize("lr", [0.5, 0.05])
def test_first_order_gradient_matches_second_order_autograd(lr):
    model, x, mx, my, z = _setup(4)
    expected = _first_order_reference(copy.deepcopy(model), x, z, mx, my, lr)
    got, _, meta_loss = _first_order(model, x, z, mx, my, lr)
    assert expected.abs().max() > 1e-6
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(meta_loss, nn.functional.cross_entropy(copy.deepcopy(model)(mx), my))


def test_first_order_gradient_matches_finite_differences():
    """d/dz of −lr ⟨∇_θ L(θ, z), g⟩ by central differences in z, each term by plain first-order autograd."""
    model, x, mx, my, z = _setup(5)
    lr = 0.3
    got, _, _ = _first_order(copy.deepcopy(model), x, z, mx, my, lr)
    m = copy.deepcopy(model)
    g = torch.autograd.grad(nn.functional.cross_entropy(m(mx), my), list(m.parameters()))

    def alignment(zz):
        mm = copy.deepcopy(model)
        gr = torch.autograd.grad(kl_prediction_to_label(mm(x), torch.log_softmax(zz, 1)), list(mm.parameters()))
        return -lr * sum(float((a * b).sum()) for a, b in zip(gr, g, strict=True))

    eps, fd = 1e-6, torch.zeros_like(z)
    for i in range(z.shape[0]):
        for k in range(z.shape[1]):
            zp, zm = z.detach().clone(), z.detach().clone()
            zp[i, k] += eps
            zm[i, k] -= eps
            fd[i, k] = (alignment(zp) - alignment(zm)) / (2 * eps)
    torch.testing.assert_close(got, fd, rtol=1e-4, atol=1e-8)


def test_first_order_is_the_small_step_limit_of_the_full_lookahead():
    model, x, mx, my, z = _setup(6)
    lr = 1e-6
    got, _, _ = _first_order(copy.deepcopy(model), x, z, mx, my, lr)
    full, _ = lookahead_surrogate(model, x=x, logits=model(x), targets=torch.log_softmax(z, 1),
                                  loss_fn=kl_prediction_to_label, meta_x=mx, meta_y=my, lr=lr)
    torch.testing.assert_close(got, torch.autograd.grad(full, z)[0], rtol=1e-4, atol=1e-14)


def test_forward_with_jvp_is_the_training_forward_plus_an_exact_jvp():
    """Same logits, running statistics and parameter gradients as a plain training forward; u = torch.func.jvp's."""
    model, x, _, _, _ = _setup(7)
    ref = copy.deepcopy(model)
    tangents = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    with frozen_norm_stats(ref):
        _, u_ref = jvp(lambda *ps: functional_call(ref, dict(zip(tangents, ps, strict=True)), (x,)),
                       tuple(p.detach() for p in ref.parameters()), tuple(tangents.values()))
    logits, u = forward_with_jvp(model, x, tangents)
    ref_logits = ref(x)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    torch.testing.assert_close(u, u_ref, rtol=1e-9, atol=1e-12)
    for a, b in zip(model.buffers(), ref.buffers(), strict=True):  # running statistics moved once, identically
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    logits.sum().backward()
    ref_logits.sum().backward()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_finite_difference_jvp_is_refused_under_mixed_precision():
    torch.manual_seed(3)
    model = Tiny()
    x, mx, my = torch.randn(6, 3, 5, 5), torch.randn(4, 3, 5, 5), torch.tensor([0, 1, 2, 1])
    z = torch.randn(6, 3).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="float32 logits"):
        lookahead_surrogate(model, x=x, logits=model(x), targets=torch.log_softmax(z, 1),
                            loss_fn=kl_prediction_to_label, meta_x=mx, meta_y=my, lr=0.5, jvp_mode="finite-difference")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the exact JVP and the first-order step run under it
        s, _ = lookahead_surrogate(model, x=x, logits=model(x), targets=torch.log_softmax(z, 1),
                                   loss_fn=kl_prediction_to_label, meta_x=mx, meta_y=my, lr=0.5)
        g, _ = first_order_gradient(model, mx, my, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        logits, u = forward_with_jvp(model, x, g, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.isfinite(torch.autograd.grad(s, z)[0]).all() and u.dtype == torch.float32 and torch.isfinite(u).all()
