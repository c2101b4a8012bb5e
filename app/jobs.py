"""Training jobs: launch `python -m engine run` as its own process group, watch it, cancel it.

The job registry is the WorkspaceStore (`register_run` / `update_run`), so a browser refresh or an app restart
finds a job again. This process additionally keeps the `Popen` handles of the jobs it started (to reap them);
a job started by an earlier app process is checked through its pid (and /proc/PID/cmdline where available).

What the engine writes into the run folder is the truth about progress: `status.json` (state, stage, epoch, ...),
`progress.jsonl` (curves) and `log.txt`. The engine refuses a non-empty `--out`, so the child's stdout/stderr
(e.g. the CLI's list of input problems, or a crash before the run folder exists) go to
`WORKSPACE/logs/<run>.console.txt` instead, recorded in the job's config as "console".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import streamlit as st

from app import state

CANCEL_GRACE_S = 15.0  # SIGINT first (the engine writes state=cancelled), SIGTERM after this many seconds
ACTIVE = ("queued", "running")


class _Children:
    """Popen handles of the jobs this app process started (so they are reaped, never left as zombies)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}

    def add(self, run_dir: Path, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs[str(run_dir)] = proc

    def get(self, run_dir: Path | str) -> subprocess.Popen | None:
        with self.lock:
            return self.procs.get(str(run_dir))

    def running(self) -> int:
        with self.lock:
            return sum(p.poll() is None for p in self.procs.values())


@st.cache_resource(show_spinner=False)
def children() -> _Children:
    return _Children()


def engine_command(dataset: Path, run_dir: Path, options: list[str]) -> list[str]:
    """The argv of a training run (what the CLI documents: `python -m engine run DATASET --out RUNDIR ...`)."""
    return [sys.executable, "-m", "engine", "run", str(dataset), "--out", str(run_dir), *options]


def launch(*, dataset: Path, run_dir: Path, method: str, options: list[str], form: dict | None = None) -> int:
    """Start a training run in its own session (process group); returns its pid. Never blocks on training."""
    run_dir = Path(run_dir).resolve()
    console = console_path(run_dir)
    cmd = engine_command(Path(dataset).resolve(), run_dir, options)
    env = job_environment(children().running())
    with open(console, "ab") as log_fh:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd,
            cwd=str(state.REPO_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Cancel kills the run and its data-loader workers
            env=env,
        )
    children().add(run_dir, proc)
    state.store().register_run(
        run_dir, dataset=dataset, method=method, state="running", pid=proc.pid,
        config={"argv": cmd[1:], "form": form or {}, "console": str(console)},
    )
    state.log.info("launched run %s (pid %s): %s", run_dir, proc.pid, " ".join(cmd))
    return proc.pid


def gpu_count() -> int:
    """GPUs visible on this machine (asked once per session: `nvidia-smi` is not free); a run on several of them
    is launched with `--nproc N`, which starts torchrun."""
    if "_gpu_count" not in st.session_state:
        from engine.launch import visible_gpus

        st.session_state["_gpu_count"] = visible_gpus()
    return int(st.session_state["_gpu_count"])


def job_environment(running: int) -> dict[str, str]:
    """A training job's environment: the repository on PYTHONPATH, unbuffered output, and OMP_NUM_THREADS (the
    engine's torch threads) = the CPUs this app may use (affinity mask, container quota) shared among the `running`
    jobs and the new one, so parallel jobs do not oversubscribe the cores. OMP_NUM_THREADS set for the app wins."""
    from engine.runtime import cpu_budget

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(state.REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_budget() // (running + 1))))
    return env


def can_resume(job: JobView) -> bool:
    """A stopped run (cancelled or failed) that left a checkpoint and its config.json can continue."""
    return job.state in ("cancelled", "failed") and (job.run_dir / "checkpoint.pt").is_file() and (
        job.run_dir / "config.json").is_file()


def resume(job: JobView) -> int:
    """Continue a stopped run from its last checkpoint with exactly its settings (`--config RUNDIR/config.json
    --resume`, the engine checks that nothing changed); the same run folder, a new process. Returns its pid."""
    config = json.loads((job.run_dir / "config.json").read_text(encoding="utf-8"))
    dataset = Path((config.get("data") or {}).get("dataset") or job.record.get("dataset") or "")
    form = (job.record.get("config") or {}).get("form") or {}
    return launch(dataset=dataset, run_dir=job.run_dir, method=job.method,
                  options=["--config", str(job.run_dir / "config.json"), "--resume"], form=form)


def console_path(run_dir: Path) -> Path:
    """Where a job's stdout/stderr go (outside the run folder, which the engine wants empty)."""
    return state.ws_dir("logs") / f"{Path(run_dir).name}.console.txt"


def pid_alive(pid: int | None, run_dir: Path | str | None = None) -> bool:
    """Whether the job's process still runs (a reaped child, a zombie or a recycled pid count as gone)."""
    if not pid:
        return False
    if run_dir is not None:
        proc = children().get(Path(run_dir).resolve())
        if proc is not None and proc.pid == pid:
            return proc.poll() is None
    from engine.rundir import process_alive

    return process_alive(pid, engine_only=run_dir is not None)


def read_status(run_dir: Path) -> dict | None:
    from engine.rundir import RunDir

    return RunDir(run_dir).read_status()


def log_tail(run_dir: Path, lines: int = 40, *, console: bool = False) -> str:
    """The last lines of the run's log.txt (or, with console=True, of its stdout/stderr file)."""
    path = console_path(run_dir) if console else Path(run_dir) / "log.txt"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64_000))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class JobView:
    """What the app shows about one run: the store's record reconciled with the run folder and the process."""

    run_dir: Path
    method: str
    state: str  # queued | running | done | failed | cancelled
    status: dict
    alive: bool
    record: dict
    message: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def name(self) -> str:
        return self.run_dir.name


def view(record: dict) -> JobView:
    """Reconcile one job record: status.json wins; a job whose process is gone while 'running' is failed."""
    run_dir = Path(record["run_dir"])
    status = read_status(run_dir) or {}
    alive = pid_alive(record.get("pid"), run_dir)
    if (alive and status.get("state") not in ACTIVE and not (record.get("config") or {}).get("external")
            and _older_than_launch(status, record)):
        status = {}  # a resumed run's process has not written its first status yet: the stopped one's is stale
    file_state = status.get("state")
    job_state = file_state or record.get("state") or "queued"
    message = str(status.get("message") or "")
    config = record.get("config") or {}
    if job_state in ACTIVE and not alive:
        if config.get("cancel_requested"):
            job_state, message = "cancelled", "cancelled (the process was stopped)"
        else:
            from engine.rundir import RunDir

            job_state = "failed"
            marked = RunDir(run_dir).mark_if_dead()  # status.json says so too, for every other reader
            message = message or (marked or {}).get("message") or (
                "the training process ended without finishing (see the end of its log below)")
    if job_state != record.get("state"):
        try:
            state.store().update_run(run_dir, state=job_state)
        except Exception:  # a read-only view must not fail because the store could not be updated
            state.log.exception("could not update run %s", run_dir)
    return JobView(run_dir=run_dir, method=record.get("method") or "", state=job_state, status=status,
                   alive=alive, record=record, message=message)


def _older_than_launch(status: dict, record: dict) -> bool:
    """status.json was written before the job was (re)registered: it belongs to the run's previous process (its
    last word, e.g. 'cancelled', while the new process is still starting)."""
    updated = status.get("updated")
    try:
        launched = datetime.fromisoformat(record["started_at"]).timestamp() if record.get("started_at") else None
    except ValueError:
        return False
    return isinstance(updated, (int, float)) and launched is not None and updated < launched


def cancel(job: JobView) -> None:
    """SIGINT the job's process group (the engine stops cleanly, writing state=cancelled); SIGTERM after a grace."""
    pid = job.record.get("pid")
    config = dict(job.record.get("config") or {})
    config["cancel_requested"] = datetime.now(UTC).isoformat(timespec="seconds")
    state.store().update_run(job.run_dir, config=config)
    if not pid or not pid_alive(pid, job.run_dir):
        state.store().update_run(job.run_dir, state="cancelled")
        return
    _signal_group(pid, signal.SIGINT)
    state.log.info("cancel requested for %s (pid %s)", job.run_dir, pid)
    threading.Thread(target=_escalate, args=(pid, job.run_dir), daemon=True).start()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session=True made the job the leader of process group `pid`
    except ProcessLookupError:
        pass
    except PermissionError:
        state.log.warning("no permission to signal process group %s", pid)


def _escalate(pid: int, run_dir: Path, grace: float = CANCEL_GRACE_S) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid, run_dir):
            return
        time.sleep(0.5)
    state.log.warning("run %s ignored SIGINT for %.0f s; sending SIGTERM", run_dir, grace)
    _signal_group(pid, signal.SIGTERM)


def read_metrics(run_dir: Path) -> dict:
    from engine.rundir import RunDir

    return RunDir(run_dir).read_metrics()


def read_progress(run_dir: Path, *, max_bytes: int = 4_000_000) -> list[dict]:
    """The records of progress.jsonl (the last max_bytes of it); broken or partial lines are skipped."""
    path = Path(run_dir) / "progress.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            raw = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = raw.splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line is probably cut
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _first_progress_time(run_dir: Path) -> float | None:
    """The "time" of the first record of progress.jsonl (the run's first step; kept across --resume)."""
    try:
        with open(Path(run_dir) / "progress.jsonl", encoding="utf-8") as fh:
            first = json.loads(fh.readline())
    except (OSError, ValueError):
        return None
    value = first.get("time") if isinstance(first, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def started_at(job: JobView) -> datetime | None:
    """When the run started, from its run folder: the first progress record, else when config.json was written
    (the engine writes it before loading images), else when the app launched it (never an import time)."""
    when = _first_progress_time(job.run_dir)
    if when is None:
        try:
            when = (job.run_dir / "config.json").stat().st_mtime
        except OSError:
            when = None
    if when is not None:
        return datetime.fromtimestamp(when, UTC)
    if (job.record.get("config") or {}).get("external"):
        return None  # registered when the app first saw it: not a start time
    try:
        return datetime.fromisoformat(job.record["started_at"]) if job.record.get("started_at") else None
    except ValueError:
        return None


def duration_s(job: JobView) -> float | None:
    """How long the run took (done: the engine's own wall time) or has taken so far; None when unknown."""
    if job.state == "done":
        for value in (read_metrics(job.run_dir).get("wall_time_s"), job.status.get("elapsed_s")):
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
    start = started_at(job)
    if start is None:
        return None
    if job.active:
        return max(0.0, time.time() - start.timestamp())
    updated = job.status.get("updated")
    return max(0.0, float(updated) - start.timestamp()) if isinstance(updated, (int, float)) else None


def register_external_run(run_dir: Path, dataset: Path | None) -> None:
    """A run folder given on the command line (e.g. by `make demo`) joins the runs table once."""
    store = state.store()
    if not run_dir.is_dir() or store.get_run(run_dir) is not None:
        return
    status = read_status(run_dir) or {}
    from engine.rundir import RunDir

    config = RunDir(run_dir).read_config() or {}
    runtime, data = config.get("runtime"), config.get("data")
    method = str((runtime.get("method") if isinstance(runtime, dict) else None) or config.get("method") or "")
    if dataset is None and isinstance(data, dict) and data.get("dataset"):
        dataset = Path(data["dataset"])
    job_state = status.get("state") or ("done" if (run_dir / "labels.csv").exists() else "failed")
    store.register_run(run_dir, dataset=dataset, method=method or None, state=job_state, pid=status.get("pid"),
                       config={"external": True})
