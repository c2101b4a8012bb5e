"""`mslg`: Meta Soft Label Generation (Algan & Ulusoy; the ROP study in ../shared/papers/mslg-rop-small-medical-data.md).

A free label variable ŷ_i per training image, initialised K·onehot(majority). Per batch:
 (a) virtual SGD step θ̂ = θ − α ∇θ KL(f_θ(x) ‖ softmax(ŷ))                         (paper eq. 1)
 (b) ŷ ← ŷ − β' ∇ŷ CE(f_θ̂(x_meta), y_meta)                                          (eq. 2)
 (c) θ ← SGD step on KL(f_θ(x) ‖ softmax(ŷ_new)) + entropy(f_θ(x))                   (eqs. 3–4)
Defaults from the ROP study: K=10, α=0.5, β=4000 (base SGD: momentum 0.9, wd 1e-4, lr 1e-3 → 1e-4 → 1e-5).

Label learning-rate rule: the paper's β=4000 goes with a loss averaged over batch × classes at batch 128 × 10
classes (1280 elements). Our KL is summed over classes and averaged over the batch, so the gradient reaching each
label variable is 1280/B times larger than in that setting; to take the same step we use β' = β · B / 1280.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.losses import entropy, kl_soft_targets
from engine.meta import lookahead_surrogate
from engine.methods.base import Method, param, register
from engine.train.context import check_finite
from engine.train.steps import EpochMeter

REFERENCE_ELEMENTS = 128 * 10  # batch × classes the paper's β was tuned for



@dataclass(frozen=True)
class MSLGConfig:
    k: float = param(10.0, "label variables start at K·onehot(majority) (paper: K=10)")
    alpha: float = param(0.5, "learning rate of the virtual (look-ahead) step (paper: 0.5)")
    beta: float = param(4000.0, "label-variable learning rate at batch 128 × 10 classes; rescaled to the run (paper: 4000)")
    entropy_weight: float = param(1.0, "weight of the entropy loss in the real update (paper: 1)")
    meta_jvp: str = param("exact", "exact (forward-mode AD) or finite-difference (one forward cheaper, approximate, "
                          "CPU/float32 only) for the Jacobian-vector product of the meta-gradient",
                          choices=("exact", "finite-difference"))


def label_lr(beta: float, batch_size: int) -> float:
    """β' = β · B / 1280: the paper's β for a loss averaged over 128 × 10 elements, for our batch-mean KL."""
    return beta * batch_size / REFERENCE_ELEMENTS


def soft_label_meta_step(ctx, b, meta_batch, targets_fn, *, alpha, entropy_weight, meta_jvp="exact"):
    """Shared (a)-(b)-(c) skeleton. `targets_fn()` -> (B,K) soft labels with graph to the meta parameters.

    Returns (logits, surrogate, meta_info, finish) where `finish(new_targets)` does the real update (c).
    """
    with ctx.autocast():
        logits = ctx.model(b.x)
    surrogate, info = lookahead_surrogate(
        ctx.model, x=b.x, logits=logits, targets=targets_fn(), loss_fn=kl_soft_targets,
        meta_x=meta_batch.x, meta_y=meta_batch.y, lr=alpha, autocast=ctx.autocast, jvp_mode=meta_jvp)

    def finish(new_targets: torch.Tensor) -> torch.Tensor:
        loss = kl_soft_targets(logits, new_targets.detach()) + entropy_weight * entropy(logits)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.optimizer.step()
        return loss.detach()

    return surrogate, info, finish


@register
class MSLG(Method):
    name = "mslg"
    summary = "Meta Soft Label Generation: per-image label variables learned on the meta set (ROP study)"
    config_cls = MSLGConfig
    learns_labels = True

    def start(self) -> None:
        ctx = self.ctx
        y = ctx.train.targets.clamp_min(0)
        z = torch.zeros(len(y), ctx.num_classes, device=ctx.device)
        z[torch.arange(len(y), device=ctx.device), y] = self.cfg.k
        self.z = z  # (N_train, K) label variables, indexed by training sample index

    def train_epoch(self, epoch: int) -> dict:
        ctx, cfg = self.ctx, self.cfg
        ctx.model.train()
        beta = label_lr(cfg.beta, ctx.batch_size)
        meta = ctx.meta_batches(epoch)
        meter = EpochMeter(ctx, epoch, ctx.steps_per_epoch())
        for step, b in enumerate(ctx.batches(epoch)):
            z = self.z[b.idx].clone().requires_grad_()
            surrogate, info, finish = soft_label_meta_step(
                ctx, b, next(meta), lambda z=z: torch.softmax(z, 1), alpha=cfg.alpha,
                entropy_weight=cfg.entropy_weight, meta_jvp=cfg.meta_jvp)
            (gz,) = torch.autograd.grad(surrogate, z)
            z_new = (z - beta * gz).detach()  # eq. 2: plain SGD on the label variables
            check_finite(z_new, "main", epoch, step, "label variables")
            self.z[b.idx] = z_new
            loss = finish(torch.softmax(z_new, 1))
            check_finite(loss, "main", epoch, step)
            meter.step(step, loss=loss, meta_loss=info["meta_loss"])
        return meter.means()

    def soft_labels(self) -> torch.Tensor:
        """softmax of the label variables; rows without a majority label (never trained on) get the model's output."""
        soft = torch.softmax(self.z.float(), 1).cpu()
        unlabeled = (self.ctx.train.targets < 0).cpu()
        if bool(unlabeled.any()):
            soft[unlabeled] = self.ctx.predict_train()[unlabeled]
        return soft

    def state_dict(self) -> dict:
        return {"z": self.z.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.z = state["z"].to(self.ctx.device)
