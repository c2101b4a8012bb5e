"""Time to first step: from the start of `python -m engine run` to its first step line in progress.jsonl.

    .venv/bin/python -m bench.first_step                      # 4000-image demo dataset at 64 px, CPU
    .venv/bin/python -m bench.first_step --image-size 224     # the default image size (the first step is slower)
    .venv/bin/python -m bench.first_step --n 400 --device cuda

Generates (once, kept under bench/out/first_step/) a synthetic demo dataset of `--n` images, deletes its image
cache, then runs `engine run` on it `--runs` times with the default settings (method, model, batch) at
`--image-size` (64 px by default, the issue's "4000 small images"; at 224 px one CPU step alone takes seconds):
the first run starts with an empty cache ("cold"), the others find it filled ("cached"). Each run is stopped with
SIGTERM (which the engine treats as Ctrl-C) as soon as its first step is in progress.jsonl. Prints the seconds
per run and the run's own timeline from log.txt. Run it under the bench lock (`flock /tmp/bench.lock ...`).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "first_step"


def demo_dataset(n: int, folder: Path = OUT) -> Path:
    """The demo dataset with `n` images under `folder` (generated once)."""
    ds = folder / f"demo{n}"
    if not (ds / "votes.csv").is_file():
        if ds.exists():
            shutil.rmtree(ds)
        subprocess.run([sys.executable, "-m", "engine", "demo-data", str(ds), "--n", str(n)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return ds


def time_to_first_step(dataset: Path, run_dir: Path, args: list[str], *, timeout: float = 600.0,
                       env: dict | None = None) -> dict:
    """Start `engine run DATASET --out RUN_DIR ARGS`, wait for the first step line, stop it; seconds, the CPU
    seconds the run used (user + system, until it stopped: a measure that other jobs on the machine barely change)
    and its log."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    progress = run_dir / "progress.jsonl"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(dataset), "--out", str(run_dir), *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seconds = None
    while time.perf_counter() - t0 < timeout and proc.poll() is None:
        if progress.is_file() and any('"step"' in line for line in progress.read_text().splitlines()):
            seconds = time.perf_counter() - t0
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the engine stops as on Ctrl-C (SIGINT is ignored in background jobs)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    log = (run_dir / "log.txt").read_text(encoding="utf-8").splitlines() if (run_dir / "log.txt").is_file() else []
    if seconds is None:
        raise RuntimeError(f"no step within {timeout:.0f} s (exit {proc.returncode}): {err.decode()[-2000:]}")
    return {"seconds": seconds, "cpu_seconds": cpu, "log": log}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=4000, help="images in the demo dataset [4000]")
    p.add_argument("--runs", type=int, default=3, help="runs: the first cold, the rest with a filled cache [3]")
    p.add_argument("--device", default="cpu", help="engine --device [cpu]")
    p.add_argument("--image-size", type=int, default=64, help="engine --image-size [64]")
    p.add_argument("--json", type=Path, default=OUT / "first_step.json")
    args = p.parse_args(argv)
    ds = demo_dataset(args.n)
    shutil.rmtree(ds / ".cache", ignore_errors=True)
    rows = []
    for i in range(args.runs):
        r = time_to_first_step(ds, OUT / "run", ["--device", args.device, "--image-size", str(args.image_size)])
        r["cache"] = "cold" if i == 0 else "cached"
        rows.append(r)
        print(f"run {i + 1} ({r['cache']}): first step after {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} CPU s)")
        for line in r["log"]:
            print(f"    {line}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"n": args.n, "device": args.device, "image_size": args.image_size,
                                     "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
