"""Single training steps shared by methods (pure over a context): cross-entropy on hard labels, and the per-epoch
meter that reports steps without a host sync per step."""

from __future__ import annotations

import math

import torch

from engine import distributed as D
from engine.losses import cross_entropy, soft_cross_entropy
from engine.train.context import Batch, NonFiniteLoss, TrainContext

SYNC_EVERY = 8  # on an accelerator, step values are read back (one transfer) every this many steps


class EpochMeter:
    """Mean of each per-step value over an epoch; every step is also sent to the progress callback.

    Values may be 0-dim tensors. On the CPU each step is read at once; on a GPU the pending steps are read back in
    one transfer every `SYNC_EVERY` steps (and after the first), so the GPU never waits for the host between steps.
    `finite={name: tensor}` marks tensors that must be finite: when read, a NaN/inf raises `NonFiniteLoss` naming the
    step (on a GPU up to SYNC_EVERY − 1 steps later than it happened; the last checkpoint is from an earlier epoch),
    in every process of a distributed run at once. Values are this process's (its shard's); `fit` averages the
    epoch's means over the processes.
    """

    def __init__(self, ctx: TrainContext, epoch: int, steps: int, *, stage: str = "main", **fixed):
        self.ctx, self.stage, self.epoch = ctx, stage, epoch
        self.fixed = {"stage": stage, "epoch": epoch, "steps": steps, **fixed}
        self.sync_every = 1 if ctx.device.type == "cpu" else SYNC_EVERY
        self.pending: list[tuple[int, float, dict, dict]] = []
        self.sums: dict[str, float] = {}
        self.weight = 0.0

    def step(self, step: int, *, weight: float = 1.0, finite: dict[str, torch.Tensor] | None = None,
             **values: torch.Tensor | float) -> None:
        self.pending.append((step, weight, values, finite or {}))
        if len(self.pending) >= self.sync_every or step == 0:
            self.flush()

    def flush(self) -> None:
        """Read the pending steps (one device-to-host transfer), check them, add them up and report them."""
        if not self.pending:
            return
        scalars = []
        for _, _, values, finite in self.pending:
            scalars += [_scalar(v, self.ctx.device) for v in values.values()]
            scalars += [_scalar(t, self.ctx.device) if t.dim() == 0 else torch.isfinite(t).all().float()
                        for t in finite.values()]
        numbers = iter(torch.stack(scalars).tolist())
        pending, self.pending = self.pending, []
        records, bad = [], None
        for step, weight, values, finite in pending:
            records.append((step, weight, {k: next(numbers) for k in values}))
            for name, t in finite.items():
                ok = next(numbers)
                if bad is None and not (math.isfinite(ok) if t.dim() == 0 else ok == 1.0):
                    bad = (step, name)
        # every process stops at the same step (several processes: one finds the NaN, all raise)
        if D.any_true(bad is not None):
            step, name = bad or (pending[0][0], "loss (on another process)")
            raise NonFiniteLoss(self.stage, self.epoch, step, name)
        for step, weight, record in records:
            for k, v in record.items():
                self.sums[k] = self.sums.get(k, 0.0) + v * weight
            self.weight += weight
            self.ctx.on_step({**self.fixed, "step": step, **record})

    def means(self) -> dict:
        self.flush()
        return {k: v / max(self.weight, 1e-12) for k, v in self.sums.items()}


def _scalar(v, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().reshape(()).float().to(device)
    return torch.tensor(float(v), device=device)


def ce_epoch(ctx: TrainContext, epoch: int, *, stage: str, model=None, optimizer=None,
             batches=None, loss_fn=cross_entropy, clip: float = 0.0) -> dict:
    """One epoch of `loss_fn(logits, y)` on labelled training rows; returns {"loss": mean}. Used by warm-up and `ce`."""
    model = model or ctx.model
    optimizer = optimizer or ctx.optimizer
    model.train()
    batches = batches if batches is not None else ctx.batches(epoch)
    meter = EpochMeter(ctx, epoch, ctx.steps_per_epoch(), stage=stage)
    for step, b in enumerate(batches):
        loss = hard_label_step(ctx, model, optimizer, b, loss_fn=loss_fn, clip=clip)
        meter.step(step, weight=len(b.y), finite={"loss": loss}, loss=loss)
    return {"loss": meter.means().get("loss", 0.0)}


def hard_label_step(ctx: TrainContext, model, optimizer, b: Batch, *, loss_fn=cross_entropy,
                    clip: float = 0.0) -> torch.Tensor:
    """Forward, loss (cross-entropy: on the vote shares `b.soft` when present, else on `b.y`), backward, (optional
    grad-norm clip), SGD step. Returns the detached loss.

    Several processes: the context's model trains through DistributedDataParallel (`ctx.ddp`), whose backward
    averages the gradients over the processes; another model has them averaged after its backward."""
    with ctx.autocast():
        logits = (ctx.ddp if model is ctx.model else model)(b.x)
    # cross-entropy trains on the experts' vote shares when the batch carries them (a 2–1 split is not a 3–0 vote)
    loss = soft_cross_entropy(logits, b.soft) if b.soft is not None and loss_fn is cross_entropy else loss_fn(logits, b.y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if model is not ctx.model:
        D.average_grads(model.parameters())
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach()
