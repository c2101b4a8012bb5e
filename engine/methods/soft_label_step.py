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

from engine.losses import entropy, kl_prediction_to_label, upcast
from engine.meta import frozen_norm_stats, lookahead_surrogate, trainable
from engine.methods.base import param


def meta_jvp_param():
    return param("exact", "exact (forward-mode AD) or finite-difference (one forward cheaper, approximate, "
                 "CPU/float32 only) for the Jacobian-vector product of the meta-gradient",
                 choices=("exact", "finite-difference"))


def real_update_param():
    return param("fresh-labels", "fresh-labels (paper eq. 4: the real update trains on the labels this step just "
                 "updated, one more backward pass) or same-pass (the real update reuses the virtual step's backward: "
                 "it trains on the labels from before this step's meta update, which act from the image's next "
                 "visit, and the virtual step includes the entropy term; 15–30 % cheaper per step)",
                 choices=("fresh-labels", "same-pass"))


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
                         meta_jvp: str = "exact", real_update: str = "fresh-labels"):
    """Steps (a)–(c) for one batch. `label_logp_fn()` -> (B, C) soft-label log-probabilities with graph to the meta
    parameters; `check` holds α (and may lower it, see `LookaheadCheck`).

    Returns (surrogate, meta_info, finish): the gradient of `surrogate` w.r.t. the meta parameters is the
    meta-gradient (b); `finish(new_label_logp)` does the real update (c) and returns its loss.
    """
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
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in trainable(ctx.model).items()}
    while True:
        surrogate, info = lookahead_surrogate(
            ctx.model, x=b.x, logits=logits, targets=label_logp, loss_fn=classification_loss,
            meta_x=meta_batch.x, meta_y=meta_batch.y, lr=check.alpha, autocast=ctx.autocast, jvp_mode=meta_jvp,
            grads=grads)
        if check.steps_left <= 0 or check.accept(info["meta_loss"], _meta_loss(ctx, meta_batch)):
            break

    def finish(new_label_logp: torch.Tensor) -> torch.Tensor:
        nonlocal loss
        if grads is None:
            loss = real_loss(new_label_logp)
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        ctx.optimizer.step()
        return loss.detach()

    return surrogate, info, finish


@torch.no_grad()
def _meta_loss(ctx, meta_batch) -> float:
    """Cross-entropy of the current model on the meta batch, normalised like the look-ahead's (batch statistics)."""
    with ctx.autocast(), frozen_norm_stats(ctx.model):
        logits = ctx.model(meta_batch.x)
    return float(F.cross_entropy(upcast(logits), meta_batch.y))
