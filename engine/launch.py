"""`engine run --nproc N`: start torchrun on this machine, so that users need not learn it.

The command becomes `python -m torch.distributed.run --standalone --nproc_per_node N -m engine run <the same
arguments>` (each process sees torchrun's RANK/WORLD_SIZE and trains its share; `engine.distributed`). torchrun runs
in this process's group, so Ctrl-C or the app's Cancel (a signal to the group) reaches every training process.
Each process gets OMP_NUM_THREADS = this job's CPU threads / N. When torchrun ends with an error
and process 0 could not say why (it was the one killed), the run folder's status is marked failed here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def visible_gpus() -> int:
    """CUDA GPUs a run on this machine can use, found without importing torch (the app asks): the `nvidia-smi -L`
    list, limited by CUDA_VISIBLE_DEVICES when that is set. 0 without an NVIDIA driver."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    n = sum(line.startswith("GPU ") for line in listed.splitlines())
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is not None:
        n = min(n, len([d for d in chosen.split(",") if d.strip() and not d.strip().startswith("-")]))
    return n


def torchrun_command(argv: list[str], nproc: int) -> list[str]:
    """argv of `engine` (e.g. ["run", DATASET, "--out", RUNDIR, "--nproc", "2", ...]) -> the torchrun command that
    starts `nproc` processes of it on this machine.

    `--nproc` is left out of the processes' arguments: torchrun's own parser reads every argument that looks like
    one of its options, and `--nproc` is an ambiguous abbreviation of its `--nproc-per-node` (it stops with "ambiguous
    option"); the processes learn their number from torchrun (WORLD_SIZE), and config.json records it."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "engine", *without_nproc(argv)]


def without_nproc(argv: list[str]) -> list[str]:
    """`argv` without `--nproc N` / `--nproc=N`, or an abbreviation of it that argparse accepts (`--np 2`: `run` has
    no other option starting with `--n`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if len(name) > 2 and "--nproc".startswith(name):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def process_environment(nproc: int, env: dict | None = None) -> dict[str, str]:
    """The environment of the training processes: this job's CPU threads (`engine.runtime.thread_count`:
    OMP_NUM_THREADS when set, e.g. by the app, else the CPU budget) shared among the `nproc` processes."""
    from engine.runtime import thread_count

    env = dict(os.environ if env is None else env)
    env["OMP_NUM_THREADS"] = str(max(1, thread_count() // nproc))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_local(argv: list[str], nproc: int, out: str) -> int:
    """Run `engine argv` on `nproc` processes of this machine through torchrun; returns its exit code (130 after
    Ctrl-C / Cancel)."""
    from engine import rundir as R
    from engine.progress import console

    cmd = torchrun_command(argv, nproc)
    console(f"starting {nproc} training processes: {' '.join(cmd[1:])}")
    proc = subprocess.Popen(cmd, env=process_environment(nproc))
    interrupted = False
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # the signal reached the whole group: wait for the processes to stop cleanly
            interrupted = True
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    if code != 0 and not interrupted and out:
        rd = R.RunDir(Path(out))
        status = rd.read_status() or {}
        if status.get("state") in R.ACTIVE_STATES:
            message = (f"a training process stopped without finishing (torchrun exit code {code}); see the logs "
                       "log.txt and log.rank*.txt" + ("; the last finished epoch is in checkpoint.pt: continue "
                                                     "with --resume" if rd.path(R.CHECKPOINT).is_file() else ""))
            rd.log("failed: " + message)
            rd.write_status("failed", **{k: v for k, v in status.items() if k not in ("state", "updated", "message")},
                            message=message)
    return 130 if interrupted else code
