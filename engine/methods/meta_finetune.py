"""`meta-finetune`: cross-entropy on the majority labels, then a short fine-tuning on the clean meta set.

The simplest way to use a small clean set, and a strong one (Hendrycks et al. 2018 use it as their baseline): the
noisy majority labels teach the network what the images look like, the meta set corrects what the noise taught it
about where the classes lie. The main phase continues cross-entropy on the majority labels; after its last epoch the
whole network takes `passes` passes over the meta set at `lr_factor` × the base learning rate. Only that final model
is selectable (besides the warm-up's last epoch), since any earlier one has not been fine-tuned. Its meta accuracy
is measured on images it trained on: the cross-fitted estimate in metrics.json (`meta_acc_oos`) is the honest one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.methods.base import Method, param, register
from engine.train.context import TrainContext
from engine.train.steps import ce_epoch, hard_label_step


@dataclass(frozen=True)
class MetaFinetuneConfig:
    passes: int = param(10, "passes over the meta set after the cross-entropy phase")
    lr_factor: float = param(0.1, "fine-tuning learning rate as a multiple of the base learning rate")


def finetune_on_meta(ctx: TrainContext, model: torch.nn.Module, *, passes: int, lr: float, seed_offset: int = 0) -> None:
    """`passes` seeded, augmented passes of cross-entropy over ctx.meta with the context's optimiser at `lr`."""
    optimizer = ctx.optimizer if model is ctx.model else ctx.make_sgd(model)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    saved, ctx.max_steps = ctx.max_steps, 0  # the meta set is small: always whole passes
    try:
        for p in range(passes):
            for b in ctx.batches(100_000 + seed_offset + p, data=ctx.meta):
                hard_label_step(ctx, model, optimizer, b)
    finally:
        ctx.max_steps = saved


@register
class MetaFinetune(Method):
    name = "meta-finetune"
    summary = "cross-entropy on majority labels, then fine-tuning on the clean meta set"
    config_cls = MetaFinetuneConfig

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.done = False

    def train_epoch(self, epoch: int) -> dict:
        stats = ce_epoch(self.ctx, epoch, stage="main")
        self.done = epoch == self.ctx.epochs - 1
        if self.done:
            finetune_on_meta(self.ctx, self.ctx.model, passes=self.cfg.passes, lr=self.ctx.lr * self.cfg.lr_factor)
        return stats

    def selectable(self) -> bool:
        return self.done

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state.get("done", False))
