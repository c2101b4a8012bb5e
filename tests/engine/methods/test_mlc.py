"""`mlc`: the look-ahead is torch's SGD update, the meta-gradient equals the unrolled one (momentum + weight decay),
the k-step discount, the LCN's shape and warm start, training through `fit`, resume."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from engine.errors import InputError
from engine.losses import soft_cross_entropy
from engine.methods.mlc import LabelCorrectionNet, mlc_meta_gradient, sgd_step_fn
from engine.train.loop import fit

K = 3
WD, MOMENTUM = 0.05, 0.9


def _setup(tiny_net, lr, seed=0):
    """Double-precision TinyNet + SGD whose momentum buffers are filled by one real step, an LCN and batches."""
    torch.manual_seed(seed)
    model = tiny_net().double()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WD)
    F.cross_entropy(model(torch.randn(8, 3, 5, 5, dtype=torch.float64)), torch.randint(0, K, (8,))).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    lcn = LabelCorrectionNet(model.num_features, K, label_dim=6, hidden_dim=5).double()
    r = lambda n: torch.randn(n, 3, 5, 5, dtype=torch.float64)  # noqa: E731
    batch = dict(x=r(6), y=torch.tensor([0, 1, 2, 2, 1, 0]), clean_x=r(3), clean_y=torch.tensor([2, 0, 1]),
                 meta_x=r(4), meta_y=torch.tensor([0, 1, 2, 1]))
    return model, opt, lcn, batch


def test_sgd_step_fn_is_torch_sgd_update(tiny_net):
    torch.manual_seed(0)
    model = tiny_net().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=MOMENTUM, weight_decay=WD)
    for _ in range(3):  # first step (no momentum buffer yet) and later ones
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
        expected = sgd_step_fn(opt)(dict(model.named_parameters()), grads)
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), expected[n], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="nesterov"):
        sgd_step_fn(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True))


def _unrolled(model, opt, lcn, b, lr):
    """Explicit copy-and-update with create_graph: L_meta(θ − lr·(μ·buf + ∇θL(θ, φ) + wd·θ)), and ∇θL."""
    params = dict(model.named_parameters())
    buffers = {n: t.clone() for n, t in model.named_buffers()}
    xx = torch.cat([b["x"], b["clean_x"]])
    with torch.no_grad():  # stop-gradient features of the same (train-mode) batch
        h = model.forward_head(copy.deepcopy(model).forward_features(xx), pre_logits=True)
    targets = torch.cat([lcn(h[:6], b["y"]), F.one_hot(b["clean_y"], K).double()])
    loss = soft_cross_entropy(functional_call(model, {**params, **buffers}, (xx,)), targets)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    new = {n: p - lr * (MOMENTUM * opt.state[p]["momentum_buffer"] + g + WD * p)
           for (n, p), g in zip(params.items(), grads, strict=True)}
    meta = F.cross_entropy(functional_call(model, {**new, **buffers}, (b["meta_x"],)), b["meta_y"])
    return torch.autograd.grad(meta, list(lcn.parameters())), dict(zip(params, grads, strict=True)), new


@pytest.mark.parametrize("lr", [0.5, 0.05])
def test_meta_gradient_matches_unrolled_with_momentum_and_weight_decay(tiny_net, lr):
    model, opt, lcn, b = _setup(tiny_net, lr)
    expected, expected_train, new = _unrolled(model, opt, lcn, b, lr)
    got, train_grads, info = mlc_meta_gradient(model, lcn, opt, **b)
    assert max(float(e.abs().max()) for e in expected) > 1e-6  # not vacuous
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-10)
    for n, g in train_grads.items():
        torch.testing.assert_close(g, expected_train[n].detach(), rtol=1e-9, atol=1e-12)
    assert info["meta_loss"] > 0 and info["gamma"] == 0.0
    # the real update with those gradients lands exactly on the looked-ahead weights θ'
    for n, p in model.named_parameters():
        p.grad = train_grads[n]
    opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), new[n].detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lr", [0.5, 0.05])
def test_first_order_meta_gradient_matches_second_order_autograd(tiny_net, lr):
    """lookahead=first-order: ∂/∂φ of −η ⟨∇θ L_train(θ, φ), ∇θ L_meta(θ)⟩, by create_graph autograd on a copy."""
    model, opt, lcn, b = _setup(tiny_net, lr, seed=2)
    ref = copy.deepcopy(model)
    m = copy.deepcopy(ref)  # the meta gradient at θ, on a copy (its own graph and running statistics)
    g = torch.autograd.grad(F.cross_entropy(m(b["meta_x"]), b["meta_y"]), list(m.parameters()))
    xx = torch.cat([b["x"], b["clean_x"]])
    with torch.no_grad():
        h = ref.forward_head(copy.deepcopy(ref).forward_features(xx), pre_logits=True)
    targets = torch.cat([lcn(h[:6], b["y"]), F.one_hot(b["clean_y"], K).double()])
    train = torch.autograd.grad(soft_cross_entropy(ref(xx), targets), list(ref.parameters()), create_graph=True)
    align = -lr * sum((a * c).sum() for a, c in zip(train, g, strict=True))
    expected = torch.autograd.grad(align, list(lcn.parameters()))
    got, train_grads, info = mlc_meta_gradient(model, lcn, opt, lookahead="first-order", **b)
    assert max(float(e.abs().max()) for e in expected) > 1e-6  # not vacuous
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-10)
    for n, t in zip(dict(model.named_parameters()), train, strict=True):  # the real update's gradient
        torch.testing.assert_close(train_grads[n], t.detach(), rtol=1e-9, atol=1e-12)
    assert info["meta_loss"] > 0


@pytest.mark.parametrize("lookahead", ["full", "first-order"])
def test_k_step_gradient_adds_the_discounted_previous_one(tiny_net, lookahead):
    lr = 0.2
    model, opt, lcn, b = _setup(tiny_net, lr, seed=1)
    one_step, _, _ = mlc_meta_gradient(model, lcn, opt, lookahead=lookahead, **b)
    prev = [torch.randn_like(p) for p in lcn.parameters()]

    def meta_grad(m):  # independent: plain autograd on a copy in train mode
        m = copy.deepcopy(m)
        return torch.autograd.grad(F.cross_entropy(m(b["meta_x"]), b["meta_y"]), list(m.parameters()))

    g_before = meta_grad(model)
    got, train_grads, info = mlc_meta_gradient(model, lcn, opt, prev=prev, lookahead=lookahead, **b)
    for n, p in model.named_parameters():
        p.grad = train_grads[n]
    opt.step()  # θ' of the look-ahead is where the real step lands
    g_after = meta_grad(model)
    dot = lambda a, c: sum(float((x * y).sum()) for x, y in zip(a, c, strict=True))  # noqa: E731
    gamma = (1 - lr) * dot(g_after, g_before) / dot(g_before, g_before)
    assert info["gamma"] == pytest.approx(gamma, rel=1e-9) and gamma != 0
    for g, o, p in zip(got, one_step, prev, strict=True):
        torch.testing.assert_close(g, o + gamma * p, rtol=1e-9, atol=1e-12)


def test_lcn_shape_from_the_paper():
    lcn = LabelCorrectionNet(20, K)
    assert lcn.emb.weight.shape == (K, 128)
    assert [tuple(m.weight.shape) for m in lcn.net[::2]] == [(64, 20 + 128), (64, 64), (K, 64)]
    assert all(isinstance(m, torch.nn.Tanh) for m in lcn.net[1::2])
    out = lcn(torch.randn(5, 20), torch.tensor([0, 1, 2, 0, 1]))
    torch.testing.assert_close(out.sum(1), torch.ones(5))


def test_lcn_starts_from_the_warmup_predictions(make_ctx, build):
    ctx = make_ctx(epochs=1, warmup=1)
    fit(ctx, build("mlc", ctx))  # warm-up only
    warm = build("mlc", ctx)
    warm.start()
    random = build("mlc", ctx, lcn_init="random")
    random.start()
    pred = ctx.predict_train()
    err = (warm.soft_labels() - pred).abs().sum(1).mean()
    assert err < 0.1, f"warm-started LCN is {err:.3f} (L1) away from the warm-up predictions"
    assert err < 0.5 * (random.soft_labels() - pred).abs().sum(1).mean()


@pytest.mark.parametrize("k", [1, 3])
def test_mlc_trains_through_fit_and_steps_the_lcn_every_k(make_ctx, build, k):
    ctx = make_ctx(n=96, epochs=2, warmup=1, unlabeled=6)
    method = build("mlc", ctx, k=k)
    snaps = []
    weights = lambda: torch.cat([p.detach().flatten().clone() for p in method.lcn.parameters()])  # noqa: E731
    start = method.start
    method.start = lambda: (start(), snaps.append(weights()))
    ctx.on_step = lambda rec: snaps.append(weights()) if rec["stage"] == "main" else None
    state = fit(ctx, method)
    # 90 labelled rows / 16 = 6 steps; the LCN moves after steps k, 2k, ... only
    changed = [not torch.equal(a, b) for a, b in zip(snaps[:-1], snaps[1:], strict=True)]
    assert changed == [(s + 1) % k == 0 for s in range(6)]
    soft = method.soft_labels()  # the method's own output (selection may keep the warm-up model)
    assert soft.shape == (96, K)
    torch.testing.assert_close(soft.sum(1), torch.ones(96))
    torch.testing.assert_close(soft[-6:], ctx.predict_train()[-6:])  # unlabelled rows: the model's output
    main = state.history[-1]
    assert main["stage"] == "main" and main["meta_loss"] > 0 and main["loss"] > 0


def test_mlc_rejects_bad_parameters(make_ctx, build):
    with pytest.raises(InputError, match="k must be >= 1"):
        build("mlc", make_ctx(), k=0)
    with pytest.raises(InputError, match="lcn_init"):
        build("mlc", make_ctx(), lcn_init="zeros")


def test_mlc_resume_mid_k_window(check_resume):
    # 6 steps per epoch with k = 4: the checkpoint falls inside a k-window (accumulated gradient pending)
    s1, s2, m1, m2 = check_resume("mlc", {"k": 4}, split_after=1, epochs=3, warmup=1)
    assert m1.steps == m2.steps == 12 and m2.acc is None
    for a, b in zip(m1.lcn.parameters(), m2.lcn.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
