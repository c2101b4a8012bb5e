"""Single training steps shared by methods (pure over a context): cross-entropy on hard labels."""

from __future__ import annotations

import torch

from engine.losses import cross_entropy, soft_cross_entropy
from engine.train.context import Batch, TrainContext, check_finite


class EpochMeter:
    """Mean of each per-step value over an epoch; every step is also sent to the progress callback."""

    def __init__(self, ctx: TrainContext, epoch: int, steps: int, *, stage: str = "main", **fixed):
        self.ctx, self.fixed = ctx, {"stage": stage, "epoch": epoch, "steps": steps, **fixed}
        self.sums: dict[str, float] = {}
        self.n = 0

    def step(self, step: int, **values: float) -> None:
        values = {k: float(v) for k, v in values.items()}
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1
        self.ctx.on_step({**self.fixed, "step": step, **values})

    def means(self) -> dict:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


def ce_epoch(ctx: TrainContext, epoch: int, *, stage: str, model=None, optimizer=None,
             batches=None, loss_fn=cross_entropy, clip: float = 0.0) -> dict:
    """One epoch of `loss_fn(logits, y)` on labelled training rows; returns {"loss": mean}. Used by warm-up and `ce`."""
    model = model or ctx.model
    optimizer = optimizer or ctx.optimizer
    model.train()
    total, n = 0.0, 0
    batches = batches if batches is not None else ctx.batches(epoch)
    steps = ctx.steps_per_epoch()
    for step, b in enumerate(batches):
        loss = hard_label_step(ctx, model, optimizer, b, loss_fn=loss_fn, clip=clip)
        check_finite(loss, stage, epoch, step)
        total += float(loss) * len(b.y)
        n += len(b.y)
        ctx.on_step({"stage": stage, "epoch": epoch, "step": step, "steps": steps, "loss": float(loss)})
    return {"loss": total / max(n, 1)}


def hard_label_step(ctx: TrainContext, model, optimizer, b: Batch, *, loss_fn=cross_entropy,
                    clip: float = 0.0) -> torch.Tensor:
    """Forward, loss (cross-entropy: on the vote shares `b.soft` when present, else on `b.y`), backward, (optional
    grad-norm clip), SGD step. Returns the detached loss."""
    with ctx.autocast():
        logits = model(b.x)
    # cross-entropy trains on the experts' vote shares when the batch carries them (a 2–1 split is not a 3–0 vote)
    loss = soft_cross_entropy(logits, b.soft) if b.soft is not None and loss_fn is cross_entropy else loss_fn(logits, b.y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach()
