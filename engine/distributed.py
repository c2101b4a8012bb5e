"""Several processes, one run: torchrun + DistributedDataParallel (gloo on the CPU, NCCL on GPUs).

Launch. `torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT] -m engine run ...` starts N×M copies
of the engine; `engine run --nproc N` starts torchrun on this machine itself (`engine.launch`). Every process runs
the whole pipeline in lockstep (SPMD: the same code, the same collectives in the same order). Process 0 alone
writes the run folder; every process logs to its own file. What only one process may decide (the run-folder
checks, the data's validation, reading checkpoint.pt / crossfit.pt / pretrain.pt) is done by process 0 and
broadcast (`on_main`), so the machines need the dataset at the same path, not a shared run folder.

Data. `--batch-size B` is the global batch: one optimiser step over all W processes sees B images. Every process
draws the same seeded permutation of the rows; step s takes the global batch order[s·B:(s+1)·B], trims it to a
multiple of W and each process takes every W-th row from its rank on (`shard_rows`: DistributedSampler's
interleaving with drop_last), so the shards are disjoint, equal in size and together the global batch. Equal shards
make the mean of the W shard-mean gradients (what DDP's all-reduce computes) the global batch's mean gradient. A
global batch that cannot give every process 2 images (BatchNorm cannot train on one) is dropped: only the last
batch of an epoch can be, as the one-process engine drops a last batch of one image. Learning rates are per global
batch, so nothing changes when W changes at the same B; a larger B (e.g. to keep B/W per GPU) needs its own lr (the
linear scaling rule of Goyal et al. 2017 is the usual start) — the engine never rescales it silently.

Gradients. The warm-up, `ce`, `apl`, `o2u`, `meta-finetune` and DR pretraining train through DDP (`wrap`): its
bucketed all-reduce overlaps the backward pass. The meta methods' steps are not DDP's forward → backward pattern
(`torch.autograd.grad` for the virtual step, functional calls at θ', forward-mode tangents; DDP supports none of
them), so they average the gradients the maths needs with explicit coalesced all-reduces (`average_`), see
`engine.methods.soft_label_step` and `engine.methods.mlc`.

Per-image state (MSLG's label variables, O2U's losses) is a full (N_train, ...) table on every process, indexed by
the training row. Within an epoch each row is visited by one process only (disjoint shards); at the end of the epoch
`merge_rows` gives every process every row's new value (rows no process touched keep theirs). Evaluation and feature
extraction are split into contiguous blocks of rows and gathered (`gather_rows`), so every process ends each epoch
with identical models, tables and predictions; `check_in_sync` compares checksums of them after every epoch and
stops the run with a clear error if they ever differ.

Label estimation. The cross-fitting folds train on every process like the main training (sharded steps, held-out
predictions gathered; process 0 saves each finished fold to crossfit.pt): they cost as much as the main training,
so they scale with it, and process 0 training them alone would leave the others waiting past `--dist-timeout`. The
EM that combines the out-of-sample probabilities with the votes (numpy, seconds) runs on every process from the
same inputs; process 0 writes the outputs.

Failures. A process that dies makes the others' next collective fail at once (gloo: connection closed) or torchrun
stops them (SIGTERM); process 0 then writes status `failed` naming the lost process when it can see it (same
machine), and the last finished epoch stays in checkpoint.pt. A process that hangs makes the others' next
collective time out after `--dist-timeout` (`timed_out`): process 0 writes status `failed` saying so, and torchrun
stops the hung process.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import pickle
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among `size` processes, and among the `local_size` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Process 0: the one that writes the run folder."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def nodes(self) -> int:
        return max(1, self.size // max(self.local_size, 1))


_world = World()
_comm_device = torch.device("cpu")
_peers: list[tuple[str, int]] = []  # (host, pid) of every rank
TRAFFIC = {"all_reduce_bytes": 0, "all_reduce_calls": 0}  # what this process has all-reduced (for the benchmark)


class PeerFailed(RuntimeError):
    """Raised on the other processes when one process failed at a point they wait for (it reports the reason)."""


class RanksDiverged(RuntimeError):
    """The processes no longer hold the same model or method state: a synchronisation bug, never a user error."""


def world() -> World:
    return _world


def torchrun_world(env: dict | None = None) -> World | None:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), or None
    when this process was not started by torchrun."""
    env = os.environ if env is None else env
    if not all(v in env for v in ("RANK", "WORLD_SIZE")):
        return None
    size = int(env["WORLD_SIZE"])
    return World(rank=int(env["RANK"]), size=size, local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
                 local_size=int(env.get("LOCAL_WORLD_SIZE", size)))


def process_device(device: torch.device, w: World) -> torch.device:
    """The device of this process: GPU `local_rank` when the run uses CUDA, else the CPU. Raises ValueError (the
    caller words it for the user) for devices several processes cannot share."""
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device {device} names one GPU, but each of several processes takes its own "
                             "(cuda:LOCAL_RANK): use --device cuda or auto")
        if torch.cuda.device_count() < w.local_size:
            raise ValueError(f"{w.local_size} processes on this machine but only {torch.cuda.device_count()} GPU(s) "
                             "visible: start at most one process per GPU (--nproc / --nproc_per_node)")
        return torch.device("cuda", w.local_rank)
    if device.type != "cpu":
        raise ValueError(f"several processes need CUDA GPUs or the CPU, not '{device.type}': use --device cpu")
    return device


def start(device: torch.device, *, timeout_s: float) -> torch.device:
    """Join the process group torchrun set up (NCCL for CUDA, gloo for the CPU); returns this process's device.
    Outside torchrun (or with one process) nothing happens and `device` is returned."""
    global _world, _comm_device, _peers
    import torch.distributed as dist

    w = torchrun_world()
    if w is None or w.size == 1 or dist.is_initialized():
        return device
    device = process_device(device, w)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _world, _comm_device = w, device if backend == "nccl" else torch.device("cpu")
    gathered: list = [None] * w.size
    dist.all_gather_object(gathered, (socket.gethostname(), os.getpid()))
    _peers = [tuple(p) for p in gathered]
    return device


def stop() -> None:
    """Leave the process group (end of run)."""
    global _world, _peers
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _world, _peers = World(), []


def timed_out(err: BaseException) -> bool:
    """Whether `err` (or an exception it was raised from) is a collective that waited longer than the process
    group's timeout (`--dist-timeout`): another process hung or is far behind. torch says so only in words (gloo:
    "Timed out waiting ...", NCCL's watchdog: "... timeout ...")."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if "timed out" in str(err).lower() or "timeout" in type(err).__name__.lower() or (
                "watchdog" in str(err).lower() and "timeout" in str(err).lower()):
            return True
        err = err.__cause__ or err.__context__
    return False


def peers() -> list[tuple[str, int]]:
    return list(_peers)


def dead_peers() -> list[int]:
    """Ranks on this machine whose process is gone (killed or crashed); other machines cannot be seen from here."""
    from engine.rundir import process_alive

    host = socket.gethostname()
    return [r for r, (h, pid) in enumerate(_peers) if h == host and pid != os.getpid() and not process_alive(pid)]


# ---------------------------------------------------------------------------------------------------------------
# data: who takes which rows


def shard_rows(idx: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """This process's rows of a global batch `idx` (B,): trimmed to a multiple of `size`, every `size`-th row from
    `rank` on. One process: `idx` itself."""
    if size == 1:
        return idx
    keep = len(idx) - len(idx) % size
    return idx[:keep][rank::size]


def shard(idx: torch.Tensor) -> torch.Tensor:
    """`shard_rows` for this process."""
    return shard_rows(idx, _world.rank, _world.size)


def min_batch(size: int | None = None) -> int:
    """The smallest global batch that gives every process 2 images."""
    return 2 * (_world.size if size is None else size)


def size_problems(processes: int, *, batch_size: int, n_train: int, n_meta: int, meta_rows: int = 2,
                  folds: int = 0) -> list:
    """Problems with splitting a run over `processes`: the global batch must split evenly into shards of at least
    2 images, and the training rows (`n_train`) and, for methods that train on it, the meta set (`n_meta`, of which
    each process needs `meta_rows` per meta batch) must do so in every cross-fitting fold (`folds` >= 2) too."""
    from engine.errors import Problem

    w, out = processes, []
    if batch_size % w:
        out.append(Problem("--batch-size", f"the global batch of {batch_size} images does not split evenly over {w} "
                           "processes", f"use a multiple of {w} (each process takes batch/{w} images)"))
    elif batch_size < 2 * w:
        out.append(Problem("--batch-size", f"{batch_size} images give each of {w} processes fewer than 2 (BatchNorm "
                           "needs 2)", f"use --batch-size {2 * w} or more, or fewer processes"))
    in_fold = (lambda n: n - math.ceil(n / folds)) if folds >= 2 else (lambda n: n)
    where = " in a cross-fitting fold" if folds >= 2 else ""
    if in_fold(n_train) < 2 * w:
        out.append(Problem("training rows", f"{in_fold(n_train)} labelled training images{where} are too few for {w} "
                           "processes (each needs 2 per batch)", "use fewer processes (--nproc)"))
    if n_meta and in_fold(n_meta) < meta_rows * w:
        out.append(Problem("meta set", f"{in_fold(n_meta)} meta images{where} are too few for {w} processes (each "
                           f"needs {meta_rows} per meta batch)", "use a larger meta set or fewer processes (--nproc)"))
    return out


def block(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [start, stop) of `n` that process `rank` of `size` evaluates (contiguous, sizes differ by at most 1)."""
    return n * rank // size, n * (rank + 1) // size


def my_block(n: int) -> tuple[int, int]:
    return block(n, _world.rank, _world.size)


# ---------------------------------------------------------------------------------------------------------------
# collectives (every process calls each at the same point; one process: identity)


def _count(tensor: torch.Tensor) -> None:
    TRAFFIC["all_reduce_bytes"] += tensor.numel() * tensor.element_size()
    TRAFFIC["all_reduce_calls"] += 1


def _all_reduce(flat: torch.Tensor, op=None) -> torch.Tensor:
    import torch.distributed as dist

    on = flat.to(_comm_device)
    _count(on)
    dist.all_reduce(on, op=op or dist.ReduceOp.SUM)
    return on.to(flat.device)


def _reduce_(tensors: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
    """Sum `tensors` over the processes in place (one all-reduce per dtype), times `scale`."""
    if not _world.active or not tensors:
        return tensors
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = _all_reduce(torch.cat([t.detach().reshape(-1) for t in group]))
        if scale != 1.0:
            flat.mul_(scale)
        offset = 0
        for t in group:
            t.detach().copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
    return tensors


def average_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Replace each tensor by its mean over the processes (in place; one coalesced all-reduce). With equal shards the
    mean of the shard-mean gradients is the global batch's mean gradient."""
    return _reduce_(tensors, 1.0 / _world.size)


def sum_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Replace each tensor by its sum over the processes (in place): for gradients of parameters shared by all
    rows (a label network) whose per-process terms are each process's share of the global sum."""
    return _reduce_(tensors, 1.0)


def average_grads(params) -> None:
    """Average the `.grad` of `params` over the processes (parameters without a gradient count as zero)."""
    if not _world.active:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_([p.grad for p in params])


def mean_value(value: float | torch.Tensor) -> float | torch.Tensor:
    """The mean of a scalar over the processes (a tensor stays a tensor of its dtype, on its device)."""
    if not _world.active:
        return value
    t = torch.as_tensor(value).detach().reshape(1).to(torch.float64, copy=True)
    average_([t])
    return t.reshape(()).to(value.dtype).to(value.device) if isinstance(value, torch.Tensor) else float(t)


def any_true(flag: bool) -> bool:
    """True on every process when `flag` is True on any."""
    if not _world.active:
        return flag
    import torch.distributed as dist

    return bool(_all_reduce(torch.tensor([1.0 if flag else 0.0]), dist.ReduceOp.MAX)[0] > 0)


def mean_stats(stats: dict) -> dict:
    """An epoch's statistics averaged over the processes: numbers present on every process are averaged (equal
    shards: the mean of the shard means), anything else (notes, events, a phase name) is process 0's."""
    if not _world.active:
        return stats
    import torch.distributed as dist

    gathered: list = [None] * _world.size
    dist.all_gather_object(gathered, stats)
    out = dict(gathered[0])
    for key, value in out.items():
        values = [g.get(key) for g in gathered]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = float(sum(values) / len(values)) if isinstance(value, float) else value
    return out


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Every process's block of rows (`my_block(n)`, local (n_r, ...)) -> all `n` rows (n, ...) on every process."""
    if not _world.active:
        return local
    import torch.distributed as dist

    size = _world.size
    per = math.ceil(n / size)
    dtype = local.dtype
    send = local.to(torch.uint8) if dtype == torch.bool else local
    buf = torch.zeros((per, *local.shape[1:]), dtype=send.dtype, device=_comm_device)
    buf[: len(local)] = send.to(_comm_device)
    parts = [torch.empty_like(buf) for _ in range(size)]
    dist.all_gather(parts, buf)
    rows = [part[: hi - lo] for part, (lo, hi) in zip(parts, (block(n, r, size) for r in range(size)), strict=True)]
    return torch.cat(rows).to(local.device).to(dtype)


def merge_rows(table: torch.Tensor, touched: torch.Tensor) -> torch.Tensor:
    """Per-image state after an epoch in which each process updated the rows `touched` (N,) bool of its own copy of
    `table` (N, ...): every process gets each touched row's new value (the mean over the processes that touched it,
    which is that one process's value, since shards are disjoint); untouched rows keep their value. In place."""
    if not _world.active:
        return table
    mask = touched.to(table.device).reshape(-1, *([1] * (table.dim() - 1)))
    total = torch.where(mask, table, torch.zeros_like(table)).double()
    count = touched.to(torch.float64).to(table.device)
    flat = torch.cat([total.reshape(-1), count])
    flat = _all_reduce(flat)
    total, count = flat[: total.numel()].view_as(total), flat[total.numel():]
    hit = count > 0
    shape = (-1, *([1] * (table.dim() - 1)))
    merged = (total / count.clamp_min(1).reshape(shape)).to(table.dtype)
    table.copy_(torch.where(hit.reshape(shape), merged, table))
    return table


def sync_buffers(model: nn.Module) -> None:
    """Average BatchNorm running statistics (float buffers) over the processes: each normalised its own shard."""
    if not _world.active:
        return
    average_([b for b in model.buffers() if b.is_floating_point()])


def _tensors_in(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors_in(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors_in(v, f"{prefix}[{i}]")


def check_in_sync(state: Any, what: str) -> None:
    """Stop the run when the processes' copies of `state` (tensors in nested dicts/lists) differ: compares a
    checksum per tensor (sum and sum of squares, float64) by one all-reduce of their max and min."""
    if not _world.active:
        return
    import torch.distributed as dist

    named = [(n, t) for n, t in _tensors_in(state) if t.is_floating_point() or t.dtype in (torch.long, torch.int)]
    if not named:
        return
    sums = torch.stack([torch.stack([t.detach().double().sum(), (t.detach().double() ** 2).sum()])
                        for _, t in named]).cpu().reshape(-1)
    hi = _all_reduce(sums.clone(), dist.ReduceOp.MAX)
    lo = _all_reduce(sums.clone(), dist.ReduceOp.MIN)
    differ = [named[i // 2][0] for i in torch.nonzero(hi != lo).reshape(-1).tolist()]
    if differ:
        names = ", ".join(sorted(set(differ))[:5])
        raise RanksDiverged(f"the training processes hold different {what} ({names}); this is a bug in the "
                            "engine's synchronisation, please report it (the last finished epoch is in checkpoint.pt)")


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on process 0 only and give its result (or raise its exception) on every process: for what only one
    process may decide or read (checks of the run folder, validation, checkpoint files)."""
    if not _world.active:
        return fn()
    import torch.distributed as dist

    payload: list = [None]
    if _world.main:
        try:
            payload = [("ok", fn())]
        except Exception as err:  # noqa: BLE001 - re-raised on every process below
            try:
                pickle.dumps(err)
            except Exception:  # an exception that cannot travel is re-raised here, worded for the others
                err = PeerFailed(f"process 0 failed: {type(err).__name__}: {err}")
            payload = [("error", err)]
    dist.broadcast_object_list(payload, src=0, device=_comm_device)
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def node_first(fn: Callable[[], T]) -> T:
    """Run `fn` on the first process of each machine, then on the others (e.g. filling a per-machine image cache
    that the others then read); a failure there stops every process instead of leaving them waiting."""
    if not _world.active:
        return fn()
    result, error = None, None
    if _world.local_rank == 0:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below, after telling the others
            error = err
    if any_true(error is not None):
        if error is not None:
            raise error
        raise PeerFailed("another process failed while preparing the data (its log names the reason)")
    return fn() if _world.local_rank != 0 else result


def barrier() -> None:
    if _world.active:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------------------------
# the model


def _counting_allreduce(state, bucket):
    """DDP's own all-reduce (mean over processes), counting the bytes it sends (`TRAFFIC`)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    _count(bucket.buffer())
    return allreduce_hook(state, bucket)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` inside DistributedDataParallel (several processes), else `model`. Buffers are not broadcast at every
    forward: each process keeps its BatchNorm statistics and `sync_buffers` averages them after every epoch."""
    if not _world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # no buffer broadcast before every forward (torch >= 2.14 names it forward_sync_buffers); buffers are equal at
    # the start anyway, and `sync_buffers` averages them after every epoch
    no_broadcast = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                    inspect.signature(DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_broadcast)
    ddp.register_comm_hook(None, _counting_allreduce)
    return ddp


@contextlib.contextmanager
def sigterm_deferred():
    """Hold SIGTERM while a failure is being written down (torchrun sends it to the survivors at once)."""
    import signal

    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    except (AttributeError, ValueError):  # not on this platform / not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
