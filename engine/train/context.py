"""Everything a method needs to train: model, optimiser, seeded batches of in-memory images, AMP, progress.

Images live in memory as one uint8 tensor (N, C, H, W) (decoded once through the image cache), on the GPU when
there is one, so a batch is an index into it: no DataLoader workers, no per-item Python. Shuffling and flips are
drawn from a generator seeded by (seed, epoch), so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from engine import distributed as D


class TensorData:
    """Images (N, C, H, W) uint8, integer targets (N,) (-1 = no label) and optionally the experts' vote shares
    `soft` (N, K) (rows sum to 1; what cross-entropy steps train on when present), kept on one device."""

    def __init__(self, images: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                 soft: torch.Tensor | np.ndarray | None = None):
        images = torch.as_tensor(images)
        if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        self.images = images.contiguous()
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.soft = None if soft is None else torch.as_tensor(soft, dtype=torch.float32)
        assert len(self.images) == len(self.targets)
        assert self.soft is None or len(self.soft) == len(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device) -> TensorData:
        return TensorData(self.images.to(device), self.targets.to(device),
                          None if self.soft is None else self.soft.to(device))

    def subset(self, rows) -> TensorData:
        """The rows `rows` (index array) as a new TensorData on the same device."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.images.device)
        return TensorData(self.images[idx], self.targets[idx], None if self.soft is None else self.soft[idx])


class Batch(NamedTuple):
    x: torch.Tensor  # (B, C, H, W) float, normalised
    y: torch.Tensor  # (B,) long, -1 = unlabeled
    idx: torch.Tensor  # (B,) long, sample index into the TensorData
    flip: torch.Tensor  # (B,) bool, which images were flipped horizontally
    soft: torch.Tensor | None = None  # (B, K) vote shares when the data carries them


def uses_bf16(device: torch.device, *, amp: bool) -> bool:
    """Whether training runs in bf16 mixed precision: AMP on, on a CUDA device that supports bf16."""
    return amp and torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**31)


@dataclass
class TrainContext:
    """Shared training state. `optimizer` is SGD over all model parameters (papers' base-classifier setting)."""

    model: nn.Module
    num_classes: int
    train: TensorData
    meta: TensorData
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 16
    seed: int = 0
    epochs: int = 30
    warmup_epochs: int = 10
    lr: float = 1e-3
    milestones: tuple[int, ...] = (10, 20)
    lr_schedule: str = "step"  # step: ÷10 at each milestone; cosine: lr·(1 + cos(π·epoch/epochs))/2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    amp: bool = True
    max_steps: int = 0  # 0 = whole epochs
    flip: bool = True  # random horizontal flip (the papers' augmentation)
    on_step: Callable[[dict], None] = lambda record: None
    optimizer: torch.optim.Optimizer | None = None
    test: TensorData | None = None  # reported only, never used for training or model selection

    def __post_init__(self):
        self.device = torch.device(self.device)
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.train = self.train.to(self.device)
        self.meta = self.meta.to(self.device)
        if self.test is not None:
            self.test = self.test.to(self.device)
        self._mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        if self.optimizer is None:
            self.optimizer = self.make_sgd(self.model)
        # the model as the DDP-style steps train it: inside DistributedDataParallel with several processes (its
        # backward averages the gradients over them), the model itself with one (engine.distributed)
        self.ddp = D.wrap(self.model, self.device)

    # --- optimisation -------------------------------------------------------------------------------------
    def make_sgd(self, model: nn.Module) -> torch.optim.SGD:
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)

    def lr_at(self, epoch: int) -> float:
        """Step schedule: divide by 10 at each milestone (ROP study: 1e-3 -> 1e-4 -> 1e-5 at epochs 10, 20);
        cosine: half a cosine from lr at epoch 0 towards 0 at `epochs` (per epoch, the scratch recipe)."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(self.epochs, 1)))
        return self.lr * (0.1 ** sum(epoch >= m for m in self.milestones))

    def set_lr(self, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> float:
        lr = self.lr_at(epoch)
        for group in (optimizer or self.optimizer).param_groups:
            group["lr"] = lr
        return lr

    def autocast_enabled(self) -> bool:
        """Whether `autocast()` runs in bf16 (`uses_bf16`)."""
        return uses_bf16(self.device, amp=self.amp)

    def autocast(self):
        """bf16 autocast on CUDA when enabled and supported; a no-op elsewhere."""
        if self.autocast_enabled():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- data ---------------------------------------------------------------------------------------------
    def prepare(self, images_u8: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float, flipped where `flip` is True (no host sync: no `flip.any()`)."""
        x = images_u8.float().div_(255.0)
        if flip is not None:
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = (x - self._mean) / self._std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batches(self, epoch: int, *, data: TensorData | None = None, labeled_only: bool = True,
                stream: int = 0, augment: bool = True) -> Iterator[Batch]:
        """Shuffled batches for one epoch, seeded by (seed, epoch, stream); stops early at `max_steps`.

        `data` may live on any device: each batch is gathered where the data is and moved to `self.device`.
        With several processes each batch is this process's shard of the global batch (`take`)."""
        data = data or self.train
        for idx, flip in self.index_batches(epoch, data=data, labeled_only=labeled_only, stream=stream,
                                            augment=augment):
            yield self.take(data, idx, flip)

    def index_batches(self, epoch: int, *, data: TensorData | None = None, labeled_only: bool = True,
                      stream: int = 0, augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The global batches of one epoch as (row indices (B,), their flips (B,) bool or None), on the CPU: the
        same in every process (one seeded permutation), so that the processes' shards are disjoint."""
        data = data or self.train
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, stream))
        pool = torch.arange(len(data))
        if labeled_only:
            pool = pool[(data.targets >= 0).cpu()]
        order = pool[torch.randperm(len(pool), generator=gen)]
        flips = (torch.rand(len(data), generator=gen) < 0.5) if (self.flip and augment) else None
        for step in range(self.steps_per_epoch(len(order))):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield idx, None if flips is None else flips[idx]

    def take(self, data: TensorData, idx: torch.Tensor, flip: torch.Tensor | None = None) -> Batch:
        """This process's share of the global batch `idx` (CPU row indices, with their flips) as a Batch: all of it
        with one process, else every W-th row from this rank on (`engine.distributed.shard`)."""
        if D.world().active:
            keep = D.shard(torch.arange(len(idx)))
            if not len(keep):
                raise ValueError(f"a batch of {len(idx)} images cannot be split over {D.world().size} processes")
            idx, flip = idx[keep], None if flip is None else flip[keep]
        return self._batch(data, idx, None if flip is None else flip.to(self.device, non_blocking=True))

    def _batch(self, data: TensorData, idx: torch.Tensor, flip: torch.Tensor | None) -> Batch:
        """Rows `idx` (a CPU index tensor) of `data`, gathered on the data's device, then put on `self.device`."""
        where = data.images.device
        src = idx.to(where, non_blocking=True)
        images = data.images[src].to(self.device, non_blocking=True)
        targets = data.targets[src].to(self.device, non_blocking=True)
        soft = None if data.soft is None else data.soft[src].to(self.device, non_blocking=True)
        dev_idx = src if where == self.device else idx.to(self.device, non_blocking=True)
        if flip is None:
            flip = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
        return Batch(self.prepare(images, flip), targets, dev_idx, flip, soft)

    def steps_per_epoch(self, n: int | None = None) -> int:
        """Batches per epoch; a last batch that cannot give every process 2 images is dropped (BatchNorm cannot
        train on one sample): with one process, a last batch of a single image."""
        n = int((self.train.targets >= 0).sum()) if n is None else n
        steps = max(1, -(-n // self.batch_size))
        if steps > 1 and n - (steps - 1) * self.batch_size < D.min_batch():
            steps -= 1
        return min(steps, self.max_steps) if self.max_steps else steps

    def meta_batches(self, epoch: int, *, stream: int = 1) -> Iterator[Batch]:
        """An endless stream of meta batches (reshuffled every pass), seeded by (seed, epoch)."""
        for idx, flip in self.meta_index_batches(epoch, stream=stream):
            yield self.take(self.meta, idx, flip)

    def meta_index_batches(self, epoch: int, *, stream: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """`meta_batches` as global (row indices, flips), for methods that split a meta batch before sharding it."""
        n = 0
        saved, self.max_steps = self.max_steps, 0
        try:
            while True:
                yield from self.index_batches(epoch * 1000 + n, data=self.meta, stream=stream)
                n += 1
        finally:
            self.max_steps = saved

    def ordered(self, data: TensorData, *, batch_size: int = 256, flip: bool = False) -> Iterator[Batch]:
        """All samples in index order, no augmentation (for evaluation and feature extraction); `data` may live on
        any device (batches are moved to `self.device`)."""
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            yield self._batch(data, idx, torch.full((len(idx),), flip, dtype=torch.bool, device=self.device))

    @torch.no_grad()
    def map_rows(self, data: TensorData, fn: Callable[[Batch], torch.Tensor], *, flip: bool = False,
                 width: tuple[int, ...] = ()) -> torch.Tensor:
        """fn(batch) -> (b, *width) over all rows of `data` in index order, without augmentation; on the CPU. With
        several processes each evaluates its own block of rows and every process gets all of them
        (`engine.distributed.gather_rows`): every process must call it at the same point."""
        lo, hi = D.my_block(len(data))
        part = data if (lo, hi) == (0, len(data)) else data.subset(torch.arange(lo, hi))
        out = [fn(b).cpu() for b in self.ordered(part, flip=flip)]
        local = torch.cat(out) if out else torch.zeros((0, *width))
        return D.gather_rows(local, len(data))

    # --- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, data: TensorData, model: nn.Module | None = None) -> torch.Tensor:
        """Softmax probabilities (N, K) in eval mode, on the CPU (split over the processes, see `map_rows`)."""
        model = model or self.model
        was_training = model.training
        model.eval()
        with self.autocast():
            probs = self.map_rows(data, lambda b: torch.softmax(model(b.x).float(), dim=1),
                                  width=(self.num_classes,))
        model.train(was_training)
        return probs

    def predict_train(self, model: nn.Module | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions for the training set (N, K), or only for the training-set indices `rows` (R, K)."""
        return self.predict(self.train if rows is None else self.train.subset(rows), model)

    def accuracy(self, data: TensorData, model: nn.Module | None = None) -> float:
        labeled = (data.targets >= 0).cpu()
        if not bool(labeled.any()):
            return float("nan")
        pred = self.predict(data, model).argmax(1)
        return float((pred[labeled] == data.targets.cpu()[labeled]).float().mean())


class NonFiniteLoss(RuntimeError):
    """Raised when a loss becomes NaN/inf; the pipeline keeps the last good checkpoint."""

    def __init__(self, stage: str, epoch: int, step: int, name: str = "loss"):
        self.stage, self.epoch, self.step = stage, epoch, step
        super().__init__(f"{name} became NaN/inf at {stage} epoch {epoch + 1}, step {step + 1}; "
                         "try a smaller --lr (or label learning rate) — the last good checkpoint was kept")


def check_finite(loss: torch.Tensor, stage: str, epoch: int, step: int, name: str = "loss") -> None:
    """Raise `NonFiniteLoss` when `loss` has a NaN/inf, in every process of a distributed run at once."""
    if D.any_true(not bool(torch.isfinite(loss).all())):
        raise NonFiniteLoss(stage, epoch, step, name)
