"""A run's progress for people and for the app: status.json, progress.jsonl, the console (stage, epoch, time left).

Imports no torch, so the app may use `fmt_seconds`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from engine import rundir as R

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.train.loop import FitState


def console(line: str) -> None:
    """A line on the console (stderr) of `python -m engine run`, above the progress bar when one is shown."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def fmt_seconds(seconds: float | None) -> str:
    """12 -> "12 s", 754 -> "12 min 34 s", 4000 -> "1 h 06 min"."""
    if seconds is None or not np.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Writes status.json, progress.jsonl and the console's progress from the training loop's callbacks: on a
    terminal a bar per epoch (stage, epoch, loss, time left); everywhere one line per epoch with the time left."""

    def __init__(self, rd: R.RunDir, cfg: RunConfig, steps_per_epoch: dict[str, int]):
        self.rd, self.cfg, self.spe = rd, cfg, steps_per_epoch
        self.t_start = time.time()
        self.stage_time: dict[str, list[float]] = {}
        self.bar = None
        self.epoch, self.stage, self.t_epoch = 0, "", time.time()
        self.last_write = 0.0

    def epoch_start(self, epoch: int, stage: str) -> None:
        from tqdm import tqdm

        if self.bar:
            self.bar.close()
        self.epoch, self.stage, self.t_epoch = epoch, stage, time.time()
        self.bar = tqdm(total=self.spe[stage], desc=f"{stage} epoch {epoch + 1}/{self.cfg.schedule.epochs}",
                        leave=False, disable=None if self.rd.writer else True, file=sys.stderr,
                        unit="step")  # disable=None: terminals only; one bar for a distributed run (process 0)

    def eta(self, step: int, steps: int) -> float | None:
        """Seconds left: measured seconds per step of each stage × the steps left in it (main ≈ 3× warm-up)."""
        done = time.time() - self.t_epoch
        rate = done / max(step + 1, 1)
        sch = self.cfg.schedule
        left_this = (steps - step - 1) * rate
        rates = {s: (np.mean(v) if v else None) for s, v in self.stage_time.items()}
        warm_rate = rates.get("warmup") or (rate if self.stage == "warmup" else rate / 3)
        main_rate = rates.get("main") or (rate if self.stage == "main" else 3 * rate)
        epochs_left = range(self.epoch + 1, sch.epochs)
        rest = sum(self.spe["warmup"] * warm_rate if e < sch.warmup_epochs else self.spe["main"] * main_rate
                   for e in epochs_left)
        return left_this + rest

    def step(self, rec: dict) -> None:
        now = time.time()
        steps = rec.get("steps", 1)
        eta = self.eta(rec.get("step", 0), steps)
        if self.bar:
            self.bar.update(1)
            postfix = {"loss": f"{rec['loss']:.3f}"} if "loss" in rec else {}
            self.bar.set_postfix(**postfix, left=fmt_seconds(eta), refresh=False)
        record = {**rec, "of": self.cfg.schedule.epochs, "eta_s": eta}
        self.rd.progress(record)
        if now - self.last_write > 0.5 or rec.get("step", 0) + 1 == steps:
            self.last_write = now
            self.rd.write_status("running", stage=rec["stage"], epoch=rec["epoch"] + 1, of=self.cfg.schedule.epochs,
                                 step=rec["step"] + 1, steps=steps, eta_s=eta, pid=os.getpid(),
                                 elapsed_s=now - self.t_start)

    def epoch_end(self, state: FitState) -> None:
        rec = state.history[-1]
        self.stage_time.setdefault(rec["stage"], []).append(rec["seconds"] / max(self.spe[rec["stage"]], 1))
        self.rd.progress({"stage": rec["stage"], "epoch": rec["epoch"], "event": "epoch_end",
                          **{k: v for k, v in rec.items() if k not in ("stage", "epoch")}})
        meta = rec.get("meta_acc")
        steps = self.spe[rec["stage"]]
        left = self.eta(steps - 1, steps) if rec["epoch"] + 1 < self.cfg.schedule.epochs else 0.0
        self.rd.log(f"epoch {rec['epoch'] + 1}/{self.cfg.schedule.epochs} [{rec['stage']}] loss {rec.get('loss', 0):.4f} "
                    f"meta acc {meta:.3f}" + (f" test acc {rec['test_acc']:.3f}" if rec.get("test_acc") is not None else "")
                    + f" ({fmt_seconds(rec['seconds'])}; about {fmt_seconds(left)} left)")
        for note in rec.get("notes", []):
            self.rd.log(f"note: {note}")

    def close(self):
        if self.bar:
            self.bar.close()
