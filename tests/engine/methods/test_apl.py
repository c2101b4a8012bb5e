"""`apl`: NCE and RCE against hand-computed values and their bounds; training through `fit`; resume."""

import math

import pytest
import torch

from engine.errors import InputError
from engine.losses import nce_rce, normalized_cross_entropy, reverse_cross_entropy
from engine.train.loop import fit

A = -math.log(1e-4)  # RCE's log 0 (reference code's clamp)
K = 3  # classes of the fixtures' data


def _logits(*probs):
    return torch.log(torch.tensor([probs], dtype=torch.float64))


def test_nce_and_rce_hand_computed():
    logits, y = _logits(0.7, 0.2, 0.1), torch.tensor([0])
    nce = math.log(0.7) / (math.log(0.7) + math.log(0.2) + math.log(0.1))  # 0.3567 / 4.2687 = 0.08356
    rce = A * (0.2 + 0.1)  # = 2.763
    assert float(normalized_cross_entropy(logits, y)) == pytest.approx(nce, rel=1e-9)
    assert float(reverse_cross_entropy(logits, y)) == pytest.approx(rce, rel=1e-6)
    # wrong label: the active part grows, the passive part is A · (1 − p_y)
    y2 = torch.tensor([2])
    nce2 = math.log(0.1) / (math.log(0.7) + math.log(0.2) + math.log(0.1))  # 2.3026 / 4.2687 = 0.5394
    rce2 = A * (0.7 + 0.2)
    assert float(normalized_cross_entropy(logits, y2)) == pytest.approx(nce2, rel=1e-9)
    assert float(reverse_cross_entropy(logits, y2)) == pytest.approx(rce2, rel=1e-6)
    # batch mean and the α/β combination
    both = torch.cat([logits, logits]), torch.tensor([0, 2])
    assert float(nce_rce(*both, alpha=2.0, beta=0.5)) == pytest.approx(
        2.0 * (nce + nce2) / 2 + 0.5 * (rce + rce2) / 2, rel=1e-6)


def test_nce_rce_bounds():
    torch.manual_seed(0)
    logits, y = torch.randn(256, K) * 5, torch.randint(0, K, (256,))
    per_row = [float(normalized_cross_entropy(logits[i:i + 1], y[i:i + 1])) for i in range(256)]
    assert min(per_row) >= 0.0 and max(per_row) <= 1.0
    uniform = torch.zeros(1, 4)
    assert float(normalized_cross_entropy(uniform, torch.tensor([1]))) == pytest.approx(1 / 4)
    sure_right, sure_wrong = torch.tensor([[30.0, 0.0, 0.0]]), torch.tensor([[0.0, 30.0, 0.0]])
    assert float(normalized_cross_entropy(sure_right, torch.tensor([0]))) < 1e-6
    assert float(reverse_cross_entropy(sure_right, torch.tensor([0]))) < 1e-4
    assert float(reverse_cross_entropy(sure_wrong, torch.tensor([0]))) == pytest.approx(A, rel=1e-5)
    assert float(nce_rce(logits, y)) <= 1.0 + A


def test_apl_trains_through_fit(make_ctx, build):
    ctx = make_ctx(epochs=3, warmup=1)
    method = build("apl", ctx)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    state = fit(ctx, method)
    soft = state.best_soft_labels
    assert soft.shape == (len(ctx.train), K)
    torch.testing.assert_close(soft.sum(1), torch.ones(len(soft)))
    main = [h for h in state.history if h["stage"] == "main"]
    assert len(main) == 2 and all(0 < h["loss"] <= 1 + A for h in main)
    assert any(not torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())


def test_apl_clips_the_gradient(make_ctx, build, monkeypatch):
    ctx = make_ctx(epochs=2, warmup=1)
    seen = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, c: seen.append(c) or real(params, c))
    build("apl", ctx, grad_clip=5.0).train_epoch(1)
    assert seen and set(seen) == {5.0}


def test_apl_rejects_bad_parameters(make_ctx, build):
    with pytest.raises(InputError, match="alpha and beta are both 0"):
        build("apl", make_ctx(), alpha=0.0, beta=0.0)
    with pytest.raises(InputError, match="'grad_clip' must be >= 0"):
        build("apl", make_ctx(), grad_clip=-1.0)


def test_apl_resume(check_resume):
    check_resume("apl", {}, split_after=1, epochs=3, warmup=1)
