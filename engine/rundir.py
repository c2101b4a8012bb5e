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
ROLES = "roles.csv"  # image, role as used by this run

STATES = ("queued", "running", "done", "failed", "cancelled")


class RunDir:
    """Paths and atomic writers for one run folder. `echo(line)`, when given, also receives every log line (the
    console of `python -m engine run`)."""

    def __init__(self, root: Path | str, echo: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.echo = echo

    def path(self, name: str) -> Path:
        return self.root / name

    def write_status(self, state: str, **fields) -> None:
        assert state in STATES, state
        atomic.write_json(self.path(STATUS), {"state": state, **fields, "updated": time.time()})

    def read_status(self) -> dict | None:
        import json

        try:
            return json.loads(self.path(STATUS).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def progress(self, record: dict) -> None:
        atomic.append_jsonl(self.path(PROGRESS), {"time": time.time(), **record})

    def log(self, line: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path(LOG), "a", encoding="utf-8") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line.rstrip("\n") + "\n")
        if self.echo is not None:
            self.echo(line.rstrip("\n"))
