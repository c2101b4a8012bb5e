"""Where and how wide the engine computes: the device (`--device auto|cpu|cuda|mps`) and the CPU threads.

torch's default thread count is every CPU of the process's affinity mask, which oversubscribes the cores when a
container's CPU quota is smaller than the machine, or when several jobs share a machine. `thread_count()` takes the
affinity mask, caps it by the cgroup CPU quota, and yields to `OMP_NUM_THREADS` when that is set (the app sets it
for each training job it starts: its CPUs shared among the jobs running). Imports nothing heavy at module level, so
the app can use it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda", "mps")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_budget() -> int:
    """CPUs this process may use: its affinity mask (`os.sched_getaffinity`), capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(n, quota) if quota else n)


def cgroup_cpu_quota(root: Path | None = None) -> int | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`), rounded up;
    None without a quota (or outside Linux)."""
    root = root or CGROUP_ROOT
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def thread_count() -> int:
    """torch's intra-op threads: `OMP_NUM_THREADS` when set to a positive number, else `cpu_budget()`."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return cpu_budget()


def configure_threads() -> int:
    """Set torch's thread count to `thread_count()`; returns it."""
    import torch

    n = thread_count()
    torch.set_num_threads(n)
    return n


def resolve_device(name: str):
    """`auto` -> CUDA, then Apple MPS, then the CPU; an explicit CUDA request without a GPU is an input error."""
    import torch

    from engine.errors import InputError, Problem

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(Problem("--device", "CUDA was requested but no GPU is available", "use --device cpu or auto"))
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(Problem("--device", f"unknown device '{name}'", "use auto, cpu, cuda or mps")) from None
