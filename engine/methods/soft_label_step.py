"""The meta step shared by MSLG and MetaLabelNet (their eqs. 1–4 / 5–13), and the check of its look-ahead.

Per batch: (a) a virtual SGD step θ' = θ − α ∇θ L_KL(f_θ(x), label), (b) the meta-gradient of the clean meta
batch's cross-entropy at θ' with respect to whatever produces the labels (MSLG: per-image label variables,
MetaLabelNet: a perceptron), (c) the real update on L_KL with the updated labels + the entropy loss. The losses are
averaged over batch × classes, as in the authors' code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from engine import distributed as D
from engine.errors import InputError, Problem
from engine.losses import entropy, kl_prediction_to_label, upcast
from engine.meta import (
    LOOKAHEADS,
    first_order_gradient,
    forward_with_jvp,
    frozen_norm_stats,
    lookahead_surrogate,
    sgd_lookahead,
    surrogate,
    trainable,
)
from engine.methods.base import Method, param


def lookahead_param(default: str = "full"):
    return param(default, "where the meta-gradient is taken: full = after the virtual step, as in the paper (a step "
                 "takes about 3.4x the time of a cross-entropy step); first-order = at the current weights, the "
                 "limit of small virtual steps, computed inside the training forward (about 2.5x; bench/RESULTS.md "
                 "compares their accuracy)", choices=LOOKAHEADS)


def meta_jvp_param():
    return param("exact", "with lookahead=full: exact (forward-mode AD) or finite-difference (one forward cheaper, "
                 "approximate, float32 only: refused under mixed precision) for the Jacobian-vector product of "
                 "the meta-gradient", choices=("exact", "finite-difference"))


def real_update_param():
    return param("fresh-labels", "fresh-labels (paper eq. 4: the real update trains on the labels this step just "
                 "updated, one more backward pass) or same-pass (the real update reuses the virtual step's backward: "
                 "it trains on the labels from before this step's meta update, which act from the image's next "
                 "visit, and the virtual step includes the entropy term; 15–30 % cheaper per step)",
                 choices=("fresh-labels", "same-pass"))


def check_lookahead(method: str, lookahead: str, meta_jvp: str, *, mixed_precision: bool) -> None:
    """Refuse, before training, settings that cannot work: an unknown look-ahead, the finite-difference JVP with the
    first-order look-ahead (which has the exact one for free) or under bf16 mixed precision."""
    where = f"method '{method}' parameters"
    if lookahead not in LOOKAHEADS:
        raise InputError(Problem(where, f"lookahead must be one of {', '.join(LOOKAHEADS)}, got '{lookahead}'"))
    if meta_jvp == "finite-difference":
        if lookahead != "full":
            raise InputError(Problem(where, "meta_jvp=finite-difference applies to lookahead=full only",
                                     f"drop --{method}-meta-jvp or pass --{method}-lookahead full"))
        if mixed_precision:
            raise InputError(Problem(where, "meta_jvp=finite-difference needs float32, but this run uses bf16 mixed "
                                            "precision on the GPU", "pass --amp false, or use meta_jvp=exact"))


class SoftLabelMethod(Method):
    """Base of the methods whose step is `soft_label_meta_step` (MSLG, MetaLabelNet): their look-ahead settings
    (`lookahead`, `meta_jvp` config fields) are checked when the method is built, before any training."""

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        check_lookahead(self.name, cfg.lookahead, cfg.meta_jvp, mixed_precision=ctx.autocast_enabled())


@dataclass
class LookaheadCheck:
    """Guards the virtual step's size α during the first main-phase steps.

    The one-step look-ahead is only informative while θ' stays near θ. On a model whose gradients are large for
    its scale (e.g. a pretrained ResNet at α=0.5: meta loss 0.9 at θ, 7.4 at θ') the labels would follow noise and
    the real update would collapse the model. For the first `steps_left` steps the meta loss is also computed at θ
    (one forward, no backward); when the look-ahead's is more than `max_ratio` times larger, α is divided by 10 and
    the step is redone (at most `max_backoffs` times). The papers' α is kept whenever the check passes.
    """

    alpha: float
    steps_left: int = 10
    max_ratio: float = 3.0
    max_backoffs: int = 3
    backoffs: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def accept(self, lookahead_loss: float, current_loss: float) -> bool:
        """True to keep this step; False after dividing α by 10 (the caller redoes the step)."""
        too_big = not math.isfinite(lookahead_loss) or lookahead_loss > self.max_ratio * max(current_loss, 1e-3)
        if too_big and self.backoffs < self.max_backoffs:
            self.alpha /= 10
            self.backoffs += 1
            return False
        self.steps_left -= 1
        return True

    def epoch_stats(self, backoffs_before: int, flag: str) -> dict:
        """{"alpha": α now} plus a note for the run log when this epoch lowered α (`flag`: the CLI option)."""
        out: dict = {"alpha": self.alpha}
        if self.backoffs > backoffs_before:
            out["events"] = ["alpha_lowered"]
            out["notes"] = [f"the look-ahead step broke the model (its meta loss rose more than {self.max_ratio:g}× "
                            f"above the current one), so α was lowered to {self.alpha:g}; set {flag} to choose it"]
        return out


def classification_loss(logits: torch.Tensor, label_logp: torch.Tensor) -> torch.Tensor:
    """KL(f_θ(x) ‖ label) averaged over batch × classes (the authors' scale). (B,K),(B,K) -> scalar."""
    return kl_prediction_to_label(logits, label_logp) / logits.shape[1]


def soft_label_meta_step(ctx, b, meta_batch, label_logp_fn, *, check: LookaheadCheck, entropy_weight: float,
                         meta_jvp: str = "exact", real_update: str = "fresh-labels", lookahead: str = "full"):
    """Steps (a)–(c) for one batch. `label_logp_fn()` -> (B, C) soft-label log-probabilities with graph to the meta
    parameters; `check` holds α (and may lower it, see `LookaheadCheck`); `lookahead`: "full" (g' at the virtual
    step's θ') or "first-order" (g' at θ, u from the training forward itself; `engine.meta`).

    Returns (surrogate, meta_info, finish): the gradient of `surrogate` w.r.t. the meta parameters is the
    meta-gradient (b); `finish(new_label_logp)` does the real update (c) and returns its loss. meta_info["meta_loss"]
    is a 0-dim tensor (L_meta at θ' for "full", at θ for "first-order"; read it lazily: no host sync per step).

    Several processes (`engine.distributed`; `b` and `meta_batch` are this process's shards of the global
    batches): the virtual-step gradient, g' and the real update's gradient are averaged over the processes (one
    all-reduce each, so θ', g' and the step are the global batch's), the look-ahead check decides on meta losses
    averaged over them (the same decision everywhere), and `surrogate` is this process's share of the global
    batch's surrogate (its rows' terms): per-image meta parameters (MSLG's label variables) get their exact
    gradient from it, shared ones (MetaLabelNet's perceptron) the sum over the processes (`distributed.sum_`).
    """
    first_order = lookahead == "first-order"
    params = trainable(ctx.model)
    if first_order:  # g' at θ first, then the training forward carries u = J g' as its tangent
        g_meta, meta_now = first_order_gradient(ctx.model, meta_batch.x, meta_batch.y, ctx.autocast)
        D.average_(list(g_meta.values()))
        logits, u = forward_with_jvp(ctx.model, b.x, g_meta, autocast=ctx.autocast)
    else:
        with ctx.autocast():
            logits = ctx.model(b.x)
    label_logp = label_logp_fn()

    def real_loss(lp: torch.Tensor) -> torch.Tensor:  # eq. 4, both terms averaged over batch × classes
        return classification_loss(logits, lp.detach()) + entropy_weight * entropy(logits) / logits.shape[1]

    grads, loss = None, None
    if real_update == "same-pass":  # one backward serves the virtual step and the real update
        loss = real_loss(label_logp)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        D.average_grads(params.values())
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
    while True:
        if first_order:
            meta_surrogate = surrogate(logits, label_logp, classification_loss, u, check.alpha)
            info = {"meta_loss": meta_now}
        else:
            meta_surrogate, info = lookahead_surrogate(
                ctx.model, x=b.x, logits=logits, targets=label_logp, loss_fn=classification_loss,
                meta_x=meta_batch.x, meta_y=meta_batch.y, lr=check.alpha, autocast=ctx.autocast, jvp_mode=meta_jvp,
                grads=grads, reduce=D.average_)
        if check.steps_left <= 0:
            break
        # the first steps only (host syncs are fine here): is the virtual step θ' = θ − α∇L a sane model?
        if first_order:
            ahead = _lookahead_meta_loss(ctx, logits, label_logp, meta_batch, check.alpha, grads)
            now = float(D.mean_value(meta_now))
        else:
            ahead, now = float(D.mean_value(info["meta_loss"])), _meta_loss(ctx, meta_batch)
        if check.accept(ahead, now):
            break
    if D.world().active:  # this process's share of the global surrogate (see the docstring)
        meta_surrogate = meta_surrogate / D.world().size

    def finish(new_label_logp: torch.Tensor) -> torch.Tensor:
        nonlocal loss
        if grads is None:
            loss = real_loss(new_label_logp)
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            D.average_grads(params.values())
        ctx.optimizer.step()
        return loss.detach()

    return meta_surrogate, info, finish


def _lookahead_meta_loss(ctx, logits, label_logp, meta_batch, alpha: float, grads) -> float:
    """L_meta(θ − α∇L) for the look-ahead check in the first-order mode (which otherwise never builds θ')."""
    params = trainable(ctx.model)
    if grads is None:
        loss = classification_loss(logits, label_logp.detach())
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), retain_graph=True), strict=True))
        D.average_(list(grads.values()))
    ahead = sgd_lookahead(params, grads, alpha)
    with torch.no_grad(), ctx.autocast(), frozen_norm_stats(ctx.model):
        out = torch.func.functional_call(ctx.model, ahead, (meta_batch.x,), strict=False)
    return float(D.mean_value(F.cross_entropy(upcast(out), meta_batch.y)))


@torch.no_grad()
def _meta_loss(ctx, meta_batch) -> float:
    """Cross-entropy of the current model on the meta batch, normalised like the look-ahead's (batch statistics),
    averaged over the processes."""
    with ctx.autocast(), frozen_norm_stats(ctx.model):
        logits = ctx.model(meta_batch.x)
    return float(D.mean_value(F.cross_entropy(upcast(logits), meta_batch.y)))
