"""Scaling of `engine run` over processes (torchrun + DDP): training images/s and bytes all-reduced per step.

    flock /tmp/bench.lock .venv/bin/python -m bench.scaling                 # CPU: 1 vs 2 processes, ce + mslg
    flock /tmp/bench.lock .venv/bin/python -m bench.scaling --quick         # smoke test (< 1 min)
    .venv/bin/python -m bench.scaling --device cuda --layouts 1x1 2x1       # 2 GPUs: one process each

What is run is the user's command: a demo dataset (`engine demo-data`, generated once under bench/out/), then
`engine run DEMO --method mslg --epochs 2 --warmup-epochs 1 --folds 0 [--nproc P]` per layout PxT (P processes
× T torch threads each: OMP_NUM_THREADS), the layouts interleaved over `--rounds` rounds so load from other
processes hits all of them alike. The warm-up epoch is `ce` (DDP's bucketed all-reduce inside the backward), the
main epoch `mslg` (the exact look-ahead: three explicit all-reduces of the model's gradients per step).

Throughput = the epoch's training images / its training seconds (the epoch's `seconds` − `eval_seconds` in
metrics.json: the steps plus the end-of-epoch merges and statistics, without the meta/test evaluation). Training
images per epoch follow the engine's rules: every global batch of `--batch-size` rows trimmed to a multiple of the
processes, a last batch too small for them dropped (`engine.distributed`). Bytes all-reduced per step = the
epoch's `allreduce_mb` (counted by `engine.distributed.TRAFFIC`: DDP's buckets and the explicit all-reduces) / its
steps. Raw JSON: bench/out/scaling.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import environment  # noqa: E402

OUT = ROOT / "bench" / "out"


def images_per_epoch(n: int, batch: int, processes: int, steps: int) -> int:
    """Training images one epoch of `steps` global batches trains on: each batch of `batch` rows (the last one
    shorter) trimmed to a multiple of `processes` (the engine's sharding)."""
    total = 0
    for s in range(steps):
        size = min(batch, n - s * batch)
        total += size - size % processes
    return total


def layout(text: str) -> tuple[int, int]:
    """"PxT" -> (processes, threads per process)."""
    p, t = text.lower().split("x")
    return int(p), int(t)


def run_once(dataset: Path, out: Path, *, processes: int, threads: int, args) -> dict:
    """One `engine run`; returns its per-epoch throughput and traffic."""
    cmd = [sys.executable, "-m", "engine", "run", str(dataset), "--out", str(out), "--method", args.method,
           "--epochs", "2", "--warmup-epochs", "1", "--folds", "0", "--image-size", str(args.image_size),
           "--batch-size", str(args.batch_size), "--device", args.device, "--seed", "0"]
    if processes > 1:
        cmd += ["--nproc", str(processes)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads * processes)}  # --nproc divides
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)  # every process of the run
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    steps: dict[int, int] = {}
    for line in (out / "progress.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "steps" in rec:
            steps[rec["epoch"]] = rec["steps"]
    n_train = metrics["n_by_role"]["train"]
    rows = []
    for h in metrics["history"]:
        images = images_per_epoch(n_train, args.batch_size, processes, steps[h["epoch"]])
        seconds = h["seconds"] - h["eval_seconds"]
        rows.append({"epoch": h["epoch"], "stage": h["stage"], "method": "ce" if h["stage"] == "warmup" else
                     args.method, "images": images, "train_seconds": seconds, "images_per_s": images / seconds,
                     "steps": steps[h["epoch"]], "allreduce_bytes_per_step":
                     h.get("allreduce_mb", 0.0) * 1e6 / steps[h["epoch"]]})
    return {"processes": processes, "threads": threads, "epochs": rows, "test_acc": metrics["test_acc"],
            "run_cpu_s": cpu_s, "run_wall_s": metrics["wall_time_s"], "load_average": os.getloadavg()}


def _allreduce_worker(rank: int, size: int, port: int, nbytes: int, repeats: int, out) -> None:
    import time

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    t = torch.ones(nbytes // 4)
    dist.all_reduce(t)  # warm-up (connections)
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        out.put(times)
    dist.destroy_process_group()


def allreduce_seconds(nbytes: int, *, processes: int = 2, repeats: int = 5) -> list[float]:
    """Seconds of one gloo all-reduce of `nbytes` (float32) among `processes` local processes, `repeats` times:
    the cost the CPU runs pay per all-reduced gradient."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_allreduce_worker, args=(r, processes, port, nbytes, repeats, out))
             for r in range(processes)]
    for proc in procs:
        proc.start()
    times = out.get(timeout=300)
    for proc in procs:
        proc.join(timeout=60)
    return times


def parameter_bytes(backbone: str, classes: int) -> int:
    """Bytes of the trainable parameters (float32): what one all-reduce of the model's gradients carries."""
    from engine.models import create_model

    model = create_model(backbone, classes, weights="", pretrained=False)
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layouts", nargs="+", default=["1x1", "1x2", "2x1"],
                    help="PxT: P processes with T torch threads each [1x1 1x2 2x1]")
    ap.add_argument("--method", default="mslg")
    ap.add_argument("--n", type=int, default=400, help="demo images (two per patient) [400]")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--quick", action="store_true", help="smoke test: 120 images, 32 px, one round")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.image_size, args.rounds = 120, 32, 1
    layouts = [layout(s) for s in args.layouts]
    work = OUT / "scaling"
    dataset = work / f"demo{args.n}"
    if not (dataset / "votes.csv").is_file():
        subprocess.run([sys.executable, "-m", "engine", "demo-data", str(dataset), "--n", str(args.n), "--n-aux", "0"],
                       cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    results = []
    for r in range(args.rounds):
        for p, t in layouts:
            out = work / f"run_{p}x{t}_{r}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            res = run_once(dataset, out, processes=p, threads=t, args=args)
            results.append({**res, "round": r})
            print(f"round {r} {p} process(es) x {t} thread(s): " + ", ".join(
                f"{e['method']} {e['images_per_s']:.1f} img/s, {e['allreduce_bytes_per_step'] / 1e6:.1f} MB/step"
                for e in res["epochs"]) + f"; run {res['run_wall_s']:.0f} s wall, {res['run_cpu_s']:.0f} CPU s, "
                f"load {res['load_average'][0]:.1f}", flush=True)
    summary = []
    print(f"\n| processes × threads | method | images/s (median of {args.rounds}) | speed-up vs 1×1 | all-reduced MB/step |")
    print("|---|---|---|---|---|")
    base: dict[str, float] = {}
    for p, t in layouts:
        for method in ("ce", args.method):
            vals = [e["images_per_s"] for res in results if (res["processes"], res["threads"]) == (p, t)
                    for e in res["epochs"] if e["method"] == method]
            mb = [e["allreduce_bytes_per_step"] / 1e6 for res in results if (res["processes"], res["threads"]) == (p, t)
                  for e in res["epochs"] if e["method"] == method]
            med = statistics.median(vals)
            base.setdefault(method, med)
            summary.append({"processes": p, "threads": t, "method": method, "images_per_s": med, "all": vals,
                            "allreduce_mb_per_step": statistics.median(mb)})
            print(f"| {p} × {t} | {method} | {med:.1f} ({', '.join(f'{v:.1f}' for v in vals)}) | "
                  f"{med / base[method]:.2f}× | {statistics.median(mb):.1f} |")
    grad_bytes = parameter_bytes("resnet18", 3)
    print(f"\nresnet18 (3 classes): {grad_bytes / 1e6:.1f} MB of float32 gradients per all-reduce")
    gloo = allreduce_seconds(grad_bytes) if args.device == "cpu" else []
    if gloo:
        print(f"one gloo all-reduce of them, 2 local processes × 1 thread: median {statistics.median(gloo) * 1e3:.0f} ms "
              f"({', '.join(f'{t * 1e3:.0f}' for t in gloo)}), {grad_bytes / statistics.median(gloo) / 1e9:.2f} GB/s")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scaling.json").write_text(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "environment": environment(),
        "load_average": os.getloadavg(), "args": vars(args), "results": results, "summary": summary,
        "resnet18_gradient_bytes": grad_bytes, "gloo_allreduce_seconds": gloo}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
