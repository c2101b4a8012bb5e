"""`mslg`: Meta Soft Label Generation (Algan & Ulusoy; the ROP study in ../shared/papers/mslg-rop-small-medical-data.md).

A free label variable ŷ_i per training image, initialised K·onehot(majority). Per batch:
 (a) virtual SGD step θ̂ = θ − α ∇θ KL(f_θ(x) ‖ softmax(ŷ))                         (paper eq. 1)
 (b) ŷ ← ŷ − β' ∇ŷ CE(f_θ̂(x_meta), y_meta)                                          (eq. 2)
 (c) θ ← SGD step on KL(f_θ(x) ‖ softmax(ŷ_new)) + entropy(f_θ(x))                   (eqs. 3–4)
Defaults from the ROP study: K=10, α=0.5, β=4000 (base SGD: momentum 0.9, wd 1e-4, lr 1e-3 → 1e-4 → 1e-5).

The KL runs from the model's prediction to the label (PENCIL's compatibility loss, which the paper adapts, and the
authors' code): only then does the meta-gradient reach label variables at K·onehot (see
`engine.losses.kl_prediction_to_label`). `real_update="same-pass"` is a cheaper variant of (c), off by default.

Loss scale, as in the authors' code: the KL and entropy losses are averaged over batch × classes (`torch.mean` of
a (B, C) tensor for C classes), so α and the real update act on the per-class mean, and the real update takes
C× smaller steps than the warm-up's cross-entropy at the same learning rate.

Label learning-rate rule: the paper's β=4000 goes with that batch × classes mean at batch 128 × 10 classes (1280
elements), i.e. each label variable moves by β/1280 times its per-sample gradient. At batch B with C classes the
per-sample factor is 1/(B·C), so to take the same step we use β' = β · B · C / 1280.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine import distributed as D
from engine.methods.base import param, register
from engine.methods.soft_label_step import (
    LookaheadCheck,
    SoftLabelMethod,
    lookahead_param,
    meta_jvp_param,
    real_update_param,
    soft_label_meta_step,
)
from engine.train.steps import EpochMeter

REFERENCE_ELEMENTS = 128 * 10  # batch × classes the paper's β was tuned for


@dataclass(frozen=True)
class MSLGConfig:
    k: float = param(10.0, "label variables start at K·onehot(majority) (paper: K=10)")
    alpha: float = param(0.5, "learning rate of the virtual (look-ahead) step (paper: 0.5); divided by 10 when it "
                         "breaks the model in the first steps (logged)")
    beta: float = param(4000.0, "label-variable learning rate at batch 128 × 10 classes; rescaled to the run (paper: 4000)")
    entropy_weight: float = param(1.0, "weight of the entropy loss in the real update (paper: 1)")
    lookahead: str = lookahead_param()
    meta_jvp: str = meta_jvp_param()
    real_update: str = real_update_param()


def label_lr(beta: float, batch_size: int, num_classes: int) -> float:
    """β' = β · B · C / 1280: the same per-sample step as the paper's β at batch 128 × 10 classes."""
    return beta * batch_size * num_classes / REFERENCE_ELEMENTS


@register
class MSLG(SoftLabelMethod):
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
        self.check = LookaheadCheck(self.cfg.alpha)

    def train_epoch(self, epoch: int) -> dict:
        ctx, cfg = self.ctx, self.cfg
        ctx.model.train()
        beta = label_lr(cfg.beta, ctx.batch_size, ctx.num_classes)
        meta = ctx.meta_batches(epoch)
        meter = EpochMeter(ctx, epoch, ctx.steps_per_epoch())
        backoffs = self.check.backoffs
        touched = torch.zeros(len(self.z), dtype=torch.bool, device=self.z.device)  # rows this process updated
        for step, b in enumerate(ctx.batches(epoch)):
            z = self.z[b.idx].clone().requires_grad_()
            surrogate, info, finish = soft_label_meta_step(
                ctx, b, next(meta), lambda z=z: torch.log_softmax(z, 1), check=self.check,
                entropy_weight=cfg.entropy_weight, meta_jvp=cfg.meta_jvp, real_update=cfg.real_update,
                lookahead=cfg.lookahead)
            (gz,) = torch.autograd.grad(surrogate, z)
            z_new = (z - beta * gz).detach()  # eq. 2: plain SGD on the label variables
            self.z[b.idx] = z_new
            touched[b.idx] = True
            loss = finish(torch.log_softmax(z_new, 1))
            meter.step(step, finite={"label variables": z_new, "loss": loss}, loss=loss, meta_loss=info["meta_loss"])
        stats = {**meter.means(), **self.check.epoch_stats(backoffs, "--mslg-alpha")}
        D.merge_rows(self.z, touched)  # several processes: each updated the rows of its shards; now all hold all
        return stats

    def soft_labels(self) -> torch.Tensor:
        """softmax of the label variables; rows without a majority label (never trained on) get the model's output."""
        soft = torch.softmax(self.z.float(), 1).cpu()
        unlabeled = (self.ctx.train.targets < 0).cpu()
        if bool(unlabeled.any()):
            soft[unlabeled] = self.ctx.predict_train(rows=torch.nonzero(unlabeled).squeeze(1))
        return soft

    def state_dict(self) -> dict:
        return {"z": self.z.cpu(), "check": self.check.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.z = state["z"].to(self.ctx.device)
        self.check = LookaheadCheck(self.cfg.alpha)
        self.check.load_state_dict(state.get("check", {}))
