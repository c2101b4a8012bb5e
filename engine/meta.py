"""The one-step look-ahead meta-gradient shared by MSLG, MetaLabelNet and MLC (pure functions).

Setting: training loss L(θ, φ) = Σ_i ℓ(f_θ(x_i), t_i(φ)) (batch-averaged inside ℓ), where the targets t depend on
meta parameters φ (MSLG: per-image label variables; MetaLabelNet: an SLP; MLC: a label-correction network).
A virtual SGD step θ' = θ − α ∇_θ L(θ, φ) is scored on a clean meta batch, L_meta(θ'). Its gradient w.r.t. φ is

    ∂L_meta/∂φ = −α · ∂/∂φ ⟨∇_θ L(θ, φ), g'⟩,   g' = ∇_θ' L_meta(θ')   (g' held constant),

and since ∇_θ L = Σ_i J_iᵀ ∂ℓ/∂f_i, the inner product is Σ_i ⟨∂ℓ/∂f_i, J_i g'⟩ with J_i g' a Jacobian-vector
product of the logits. So instead of differentiating through a copied-and-updated network (second-order autograd
over all weights) we compute g' with one meta forward/backward, u = J g' with one forward-mode pass, and the
surrogate S = −α Σ_i ⟨∂ℓ/∂f_i(t(φ)), u_i⟩ whose gradient w.r.t. φ is exactly the meta-gradient. BatchNorm
running statistics are untouched by the virtual passes (`frozen_norm_stats`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jvp

from engine.losses import upcast

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (B,K), targets) -> scalar


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module):
    """Virtual forwards in train mode: normalise with batch statistics but leave running statistics untouched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def sgd_lookahead(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
    """θ' = θ − lr·g (the virtual step of MSLG eq. 1 / MetaLabelNet eq. 6)."""
    return {n: p.detach() - lr * grads[n] for n, p in params.items()}


def lookahead_surrogate(
    model: nn.Module,
    *,
    x: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    meta_x: torch.Tensor,
    meta_y: torch.Tensor,
    lr: float,
    step_fn: Callable[[dict, dict], dict] | None = None,
    autocast=None,
    jvp_mode: str = "exact",
    grads: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Surrogate S(φ) whose gradient w.r.t. the meta parameters equals ∂L_meta(θ'(φ))/∂φ at the current φ.

    x: (B, C, H, W) training batch; logits: (B, K) = model(x), computed by the caller with its graph kept (so the
    caller can reuse it for the real update); targets: (B, K) soft labels depending on φ (graph kept);
    meta_x, meta_y: clean meta batch (M, C, H, W), (M,). `step_fn(params, grads) -> θ'` defaults to plain SGD with
    `lr`; MLC passes the real optimiser's update. The derivative dθ'/dg must be `-lr` (true for SGD with momentum
    and weight decay, whose extra terms do not depend on φ). Returns (S, {"meta_loss": float}).

    `jvp_mode="exact"` computes u = J g' by forward-mode AD; `"finite-difference"` approximates it with one extra
    forward, u ≈ (f(θ + εg') − f(θ)) / ε with ε = 0.01/‖g'‖ (as DARTS does): cheaper, O(ε) error, float32 only.

    `grads`: the virtual step's direction when the caller already has it (name -> gradient); it may include terms
    that do not depend on φ (an entropy loss), which move θ' but leave the surrogate's form unchanged.
    """
    autocast = autocast or contextlib.nullcontext
    params = trainable(model)
    names = list(params)
    if grads is None:  # ∇_θ L(θ, φ) at the current targets (φ fixed): the virtual step direction.
        loss = loss_fn(logits, targets.detach())
        grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True), strict=True))
    new = (step_fn or (lambda p, g: sgd_lookahead(p, g, lr)))(params, grads)
    new = {n: t.detach().requires_grad_() for n, t in new.items()}
    # g' = ∇_θ' L_meta(θ') on the meta batch.
    with autocast(), frozen_norm_stats(model):
        meta_logits = functional_call(model, new, (meta_x,), strict=False)
    meta_loss = nn.functional.cross_entropy(upcast(meta_logits), meta_y)
    g_meta = torch.autograd.grad(meta_loss, [new[n] for n in names])
    # u = J g': how the training logits move along g' (forward-mode AD at θ, same batch statistics).
    if jvp_mode == "exact":
        u = _jvp_exact(model, names, params, g_meta, x, autocast)
    elif jvp_mode == "finite-difference":
        u = _jvp_finite_difference(model, names, params, g_meta, x, logits)
    else:
        raise ValueError(f"jvp_mode must be 'exact' or 'finite-difference', not {jvp_mode!r}")
    # ∂ℓ/∂f at the current logits as a function of the targets (graph to φ kept).
    f = upcast(logits.detach()).requires_grad_()
    dl_df = torch.autograd.grad(loss_fn(f, targets), f, create_graph=True)[0]
    surrogate = -lr * (dl_df * u.detach()).sum()
    return surrogate, {"meta_loss": float(meta_loss.detach())}


def _jvp_exact(model, names, params, g_meta, x, autocast) -> torch.Tensor:
    """u = J g' (B, K) by forward-mode AD at θ on the training batch (batch statistics, running stats untouched)."""

    def logits_at(*ps):
        with autocast():
            return upcast(functional_call(model, dict(zip(names, ps, strict=True)), (x,), strict=False))

    with frozen_norm_stats(model):
        _, u = jvp(logits_at, tuple(params[n].detach() for n in names), tuple(g.detach() for g in g_meta))
    return u


@torch.no_grad()
def _jvp_finite_difference(model, names, params, g_meta, x, logits, step: float = 0.01) -> torch.Tensor:
    """u ≈ (f(θ + εg') − f(θ)) / ε, reusing the caller's f(θ); one forward without a graph."""
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in g_meta))
    eps = step / (float(norm) + 1e-12)
    shifted = {n: params[n].detach() + eps * g for n, g in zip(names, g_meta, strict=True)}
    with frozen_norm_stats(model):
        f_plus = functional_call(model, shifted, (x,), strict=False).float()
    return (f_plus - logits.detach().float()) / eps
