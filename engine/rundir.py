"""The run folder: the interface between engine and app. File names and the status/progress writers live here."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from engine import atomic

CONFIG = "config.json"  # resolved config + versions + git commit
STATUS = "status.json"  # {"state", "stage", "epoch", "of", "step", "steps", "eta_s", "updated", "pid", "message"}
PROGRESS = "progress.jsonl"  # one JSON record per logged step/epoch
LOG = "log.txt"
LABELS = "labels.csv"
METRICS = "metrics.json"
MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"  # last complete epoch, for --resume
PRETRAIN = "pretrain.pt"  # DR-pretraining backbone checkpoint
CROSSFIT = "crossfit.pt"  # finished folds of the estimation stage, for --resume
ROLES = "roles.csv"  # image, role as used by this run
PRIOR = "prior.csv"  # image, prior:<class>: the label estimate's calibrated model probabilities (engine/active.py)
REVIEWED = "reviewed.csv"  # the verified labels this run was given with --reviewed (engine/reviewed.py)

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")


def process_alive(pid: int | None, *, engine_only: bool = True) -> bool:
    """Whether process `pid` still runs. A zombie is gone; with `engine_only`, so is a pid that the system has
    recycled for a process that is not `python -m engine` (checked on /proc where there is one)."""
    import os

    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    proc_dir = Path(f"/proc/{int(pid)}")
    if proc_dir.exists():
        try:
            if (proc_dir / "stat").read_text().split(")")[-1].split()[0] == "Z":
                return False
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        if engine_only and b"engine" not in cmdline:
            return False
    return True


def rank_log(rank: int) -> str:
    """The log file of process `rank` > 0 of a distributed run (process 0 writes log.txt)."""
    return f"log.rank{rank}.txt"


class RunDir:
    """Paths and atomic writers for one run folder. `echo(line)`, when given, also receives every log line (the
    console of `python -m engine run`).

    `rank`: the process of a distributed run (`engine.distributed`). Process 0 writes the run folder; any other
    writes only its own log, `log.rank<r>.txt` (its status and progress calls do nothing)."""

    def __init__(self, root: Path | str, echo: Callable[[str], None] | None = None, *, rank: int = 0):
        self.root = Path(root)
        self.echo = echo
        self.rank = rank

    @property
    def writer(self) -> bool:
        """Whether this process writes the run folder (process 0)."""
        return self.rank == 0

    def path(self, name: str) -> Path:
        return self.root / name

    def write_status(self, state: str, **fields) -> None:
        assert state in STATES, state
        if self.writer:
            atomic.write_json(self.path(STATUS), {"state": state, **fields, "updated": time.time()})

    def read_status(self) -> dict | None:
        return self._read_json(STATUS)

    def read_config(self) -> dict | None:
        """The run's resolved config.json (`RunConfig.to_dict()` + versions, classes, device), or None when it is
        missing or unreadable. The one reader of config.json: engine (resume, export) and app alike."""
        return self._read_json(CONFIG)

    def read_metrics(self) -> dict:
        """The run's metrics.json, or {} when it is missing or unreadable (a run that has not finished)."""
        return self._read_json(METRICS) or {}

    def _read_json(self, name: str) -> dict | None:
        import json

        try:
            data = json.loads(self.path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def mark_if_dead(self) -> dict | None:
        """A run whose status.json still says queued/running but whose process is gone (kill -9, power cut) is
        marked failed, so every reader sees the truth; returns the new status, or None when nothing changed."""
        status = self.read_status()
        if not status or status.get("state") not in ACTIVE_STATES or process_alive(status.get("pid")):
            return None
        self.write_status("failed", **{k: v for k, v in status.items() if k not in ("state", "updated", "message")},
                          message=f"the training process (pid {status.get('pid')}) stopped without finishing "
                          "(killed or the machine restarted)")
        return self.read_status()

    def progress(self, record: dict) -> None:
        if self.writer:
            atomic.append_jsonl(self.path(PROGRESS), {"time": time.time(), **record})

    def log(self, line: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path(LOG if self.writer else rank_log(self.rank)), "a", encoding="utf-8") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line.rstrip("\n") + "\n")
        if self.echo is not None:
            self.echo(line.rstrip("\n"))
