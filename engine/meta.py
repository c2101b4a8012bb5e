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

Two look-aheads (`LOOKAHEADS`):
- `full` — exactly the above (`lookahead_surrogate`). A step costs the training forward and backward, the virtual
  step's backward, a meta forward and backward at θ', the forward-mode pass and, for MSLG/MetaLabelNet, the real
  update's backward: about 3.4× a cross-entropy step (CPU, resnet18; bench/RESULTS.md).
- `first-order` — g' is taken at θ instead of θ' (`first_order_gradient`): exact as α → 0, and the meta-gradient
  becomes −α ∂/∂φ ⟨∇_θ L(θ, φ), ∇_θ L_meta(θ)⟩, the alignment of the training gradient with the meta gradient. g' is
  then known before the training forward, so u = J g' comes out of the training forward itself, run as one
  dual-number (forward-mode) pass whose primal output keeps its graph for the real update (`forward_with_jvp`): no
  virtual backward, no separate JVP pass — about 2.5× a cross-entropy step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

from engine.losses import upcast

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (B,K), targets) -> scalar
LOOKAHEADS = ("first-order", "full")  # where g' is taken: at θ (no virtual step), or at the virtual step's θ'


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
    """θ' = θ − lr·g (the virtual step of MSLG eq. 1 / MetaLabelNet eq. 6), one fused foreach op over all tensors."""
    names = list(params)
    new = torch._foreach_add([params[n].detach() for n in names], [grads[n] for n in names], alpha=-lr)
    return dict(zip(names, new, strict=True))


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of a timm-style model -> (pre-logit features (B, F), logits (B, K))."""
    fmap = model.forward_features(x)
    return model.forward_head(fmap, pre_logits=True), model.forward_head(fmap)


class _FeaturesAndLogits(nn.Module):
    """`features_and_logits` as a module's forward, so `functional_call` can run it with substituted parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return features_and_logits(self.model, x)


def forward_with_jvp(model: nn.Module, x: torch.Tensor, tangents: dict[str, torch.Tensor], *, autocast=None,
                     with_features: bool = False):
    """The training forward f_θ(x) and u = J_θ f · tangents in one dual-number pass.

    tangents: {name: tensor} for the trainable parameters (a direction in weight space, e.g. the meta gradient).
    Returns (logits (B, K), u (B, K)) — or (features (B, F), logits, u) with `with_features` (timm interface) —
    where logits (and features) are exactly `model(x)`'s, with their graph to the parameters kept for the real
    update's backward; running statistics update as in a plain training forward. u is float32, detached.
    """
    autocast = autocast or contextlib.nullcontext
    params = trainable(model)
    module = _FeaturesAndLogits(model) if with_features else model
    prefix = "model." if with_features else ""
    with fwAD.dual_level():
        dual = {prefix + n: fwAD.make_dual(p, tangents[n].to(p.dtype)) for n, p in params.items()}
        with autocast():
            out = functional_call(module, dual, (x,), strict=False)
        outs = out if with_features else (out,)
        primals = [fwAD.unpack_dual(t).primal for t in outs]
        u = fwAD.unpack_dual(outs[-1]).tangent
    u = upcast(u.detach()) if u is not None else torch.zeros_like(upcast(primals[-1].detach()))
    return (*primals, u)


def meta_gradient(model: nn.Module, params: dict[str, torch.Tensor], meta_x: torch.Tensor, meta_y: torch.Tensor,
                  autocast=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """g = ∇ CE(f(meta_x; params), meta_y) w.r.t. `params` ({name: tensor}, e.g. θ or θ'), in train mode without
    touching BatchNorm running statistics; and that meta loss (0-dim, detached)."""
    autocast = autocast or contextlib.nullcontext
    params = {n: p.detach().requires_grad_() for n, p in params.items()}
    with autocast(), frozen_norm_stats(model):
        meta_logits = functional_call(model, params, (meta_x,), strict=False)
    meta_loss = nn.functional.cross_entropy(upcast(meta_logits), meta_y)
    grads = torch.autograd.grad(meta_loss, list(params.values()))
    return dict(zip(params, grads, strict=True)), meta_loss.detach()


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
    reduce: Callable[[list[torch.Tensor]], object] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Surrogate S(φ) whose gradient w.r.t. the meta parameters equals ∂L_meta(θ'(φ))/∂φ at the current φ (`full`).

    x: (B, C, H, W) training batch; logits: (B, K) = model(x), computed by the caller with its graph kept (so the
    caller can reuse it for the real update); targets: (B, K) soft labels depending on φ (graph kept);
    meta_x, meta_y: clean meta batch (M, C, H, W), (M,). `step_fn(params, grads) -> θ'` defaults to plain SGD with
    `lr`; MLC passes the real optimiser's update. The derivative dθ'/dg must be `-lr` (true for SGD with momentum
    and weight decay, whose extra terms do not depend on φ). Returns (S, {"meta_loss": L_meta(θ'), 0-dim tensor}).

    `jvp_mode="exact"` computes u = J g' by forward-mode AD; `"finite-difference"` approximates it with one extra
    forward, u ≈ (f(θ + εg') − f(θ)) / ε with ε = 0.01/‖g'‖ (as DARTS does): cheaper, O(ε) error, float32 only
    (refused under mixed precision).

    `grads`: the virtual step's direction when the caller already has it (name -> gradient); it may include terms
    that do not depend on φ (an entropy loss), which move θ' but leave the surrogate's form unchanged.

    `reduce(tensors)`: applied in place to the virtual-step gradient computed here and to g' — with several
    processes, their mean over the processes (`engine.distributed.average_`), so that θ' and g' are the global
    batch's; u, and so S, stay this process's (its training rows).
    """
    if jvp_mode not in ("exact", "finite-difference"):
        raise ValueError(f"jvp_mode must be 'exact' or 'finite-difference', not {jvp_mode!r}")
    if jvp_mode == "finite-difference":
        check_finite_difference_precision(logits)
    params = trainable(model)
    names = list(params)
    if grads is None:  # ∇_θ L(θ, φ) at the current targets (φ fixed): the virtual step direction.
        loss = loss_fn(logits, targets.detach())
        grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True), strict=True))
        if reduce is not None:
            reduce(list(grads.values()))
    new = (step_fn or (lambda p, g: sgd_lookahead(p, g, lr)))(params, grads)
    g_meta, meta_loss = meta_gradient(model, new, meta_x, meta_y, autocast)  # g' = ∇_θ' L_meta(θ')
    if reduce is not None:
        reduce(list(g_meta.values()))
    # u = J g': how the training logits move along g' (forward-mode AD at θ, same batch statistics).
    if jvp_mode == "exact":
        with torch.no_grad(), frozen_norm_stats(model):
            u = forward_with_jvp(model, x, g_meta, autocast=autocast)[-1]
    else:
        u = _jvp_finite_difference(model, names, params, [g_meta[n] for n in names], x, logits)
    return surrogate(logits, targets, loss_fn, u, lr), {"meta_loss": meta_loss}


def first_order_gradient(model: nn.Module, meta_x: torch.Tensor, meta_y: torch.Tensor,
                         autocast=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(g, L_meta(θ)) for the `first-order` look-ahead: the meta gradient at the current θ, the tangent to pass to
    `forward_with_jvp` for the training batch; then `surrogate(logits, targets, loss_fn, u, lr)` gives
    ∂/∂φ of −lr ⟨∇_θ L(θ, φ), g⟩, the limit of `lookahead_surrogate`'s gradient as lr → 0."""
    return meta_gradient(model, trainable(model), meta_x, meta_y, autocast)


def surrogate(logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, u: torch.Tensor,
              lr: float) -> torch.Tensor:
    """S = −lr Σ_i ⟨∂ℓ/∂f_i(t(φ)), u_i⟩ at the current logits (B, K), with the graph from the targets (B, K) to φ
    kept; u (B, K) = J g' is a constant. ∂S/∂φ is the meta-gradient."""
    f = upcast(logits.detach()).requires_grad_()
    dl_df = torch.autograd.grad(loss_fn(f, targets), f, create_graph=True)[0]
    return -lr * (dl_df * u.detach()).sum()


def check_finite_difference_precision(logits: torch.Tensor) -> None:
    """Refuse the finite-difference JVP on reduced-precision logits (bf16/fp16 autocast): the difference
    f(θ + εg') − f(θ) is then below the rounding step of bf16 (≈ 0.4 % of |f|), so u would be rounding noise."""
    low = logits.dtype in (torch.float16, torch.bfloat16)
    if low or torch.is_autocast_enabled(logits.device.type):
        raise ValueError("the finite-difference JVP needs float32 logits, but this step runs under bf16/fp16 mixed "
                         "precision (its difference would be rounding noise): use the exact JVP or turn AMP off")


@torch.no_grad()
def _jvp_finite_difference(model, names, params, g_meta, x, logits, step: float = 0.01) -> torch.Tensor:
    """u ≈ (f(θ + εg') − f(θ)) / ε, reusing the caller's f(θ); one forward without a graph."""
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in g_meta))
    eps = step / (float(norm) + 1e-12)
    shifted = {n: params[n].detach() + eps * g for n, g in zip(names, g_meta, strict=True)}
    with frozen_norm_stats(model):
        f_plus = functional_call(model, shifted, (x,), strict=False).float()
    return (f_plus - logits.detach().float()) / eps
