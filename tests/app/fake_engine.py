"""Stands in for `python -m engine run` in the Train page tests: writes the run-folder files, then waits.

It writes status.json (running) and progress.jsonl like the engine, records its argv in argv.json, and on SIGINT
writes state=cancelled and exits 130 (what the engine does). `--epochs 0` makes it finish at once (state=done).
"""

import json
import os
import sys
import time
from pathlib import Path

argv = sys.argv[1:]
out = Path(argv[argv.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)


def status(state, **fields):
    tmp = out / ".status.tmp"
    tmp.write_text(json.dumps({"state": state, **fields, "updated": time.time(), "pid": os.getpid()}))
    os.replace(tmp, out / "status.json")


(out / "argv.json").write_text(json.dumps(argv))
with open(out / "log.txt", "a") as log:
    log.write("fake engine started\n")
with open(out / "progress.jsonl", "a") as fh:
    for step in range(4):
        fh.write(json.dumps({"stage": "warmup", "epoch": 0, "step": step, "steps": 4, "loss": 1.0 - 0.1 * step,
                             "of": 2, "eta_s": 30.0}) + "\n")
    fh.write(json.dumps({"stage": "warmup", "epoch": 0, "event": "epoch_end", "loss": 0.7, "meta_acc": 0.6}) + "\n")
status("running", stage="warmup", epoch=1, of=2, step=4, steps=4, eta_s=30.0)
if "--epochs" in argv and argv[argv.index("--epochs") + 1] == "0":
    status("done", stage="done")
    sys.exit(0)
try:
    for _ in range(600):
        time.sleep(0.1)
    status("failed", message="fake engine timed out")
except KeyboardInterrupt:
    status("cancelled", message="interrupted; continue with --resume")
    sys.exit(130)
