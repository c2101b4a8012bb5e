"""Cost of one meta-training step over one cross-entropy step: time and peak memory, same model, batch and data.

    .venv/bin/python -m bench.step_cost                       # CPU: digits MLP + timm resnet18 @64×64, batch 32
    .venv/bin/python -m bench.step_cost --device cuda
    .venv/bin/python -m bench.step_cost --quick               # smoke test

What is timed is the methods' real step code: a `TrainContext` and a method instance are built, `method.start()`
runs (not timed: MetaLabelNet's one-off feature extraction belongs to it), then `method.train_epoch(epoch)` runs
with `ctx.max_steps = warmup + steps`; `ce` is `engine.train.steps.ce_epoch` with the same `max_steps`, so every
method goes through the same data pipeline (`ctx.batches`). Each step's time is the gap between consecutive
`ctx.on_step` callbacks (the first `warmup` steps of every call are dropped; on CUDA `on_step` receives a Python
float of the loss, which synchronises). The methods run interleaved in `--rounds` rounds so load from other
processes hits all of them alike; the reported time is the median over all kept steps, the ratio is to `ce`'s.

Peak memory, in one fresh subprocess per (model, method) so earlier allocations cannot hide a peak:
- CPU (Linux): the peak resident set during the steps minus the resident set before them — `/proc/self/clear_refs`
  ← 5 resets the peak mark after set-up (model, data, optimiser, `method.start()`), then VmHWM − VmRSS_before:
  the extra memory the steps needed (activations, autograd graph, look-ahead copies, optimiser state).
  tracemalloc does not see torch's allocator; `ru_maxrss` keeps the parent's peak across fork+exec.
- CUDA: `torch.cuda.max_memory_allocated()` during the steps minus `memory_allocated()` before them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import NUM_CLASSES, TinyNet, digits_stats, environment, load_digits_u8  # noqa: E402

OUT = ROOT / "bench" / "out"
META_METHODS = ("mslg", "metalabelnet", "mlc")
MODELS = {  # name: (image size, channels, batch size)
    "digits-mlp": (8, 1, 32),
    "resnet18@64": (64, 3, 32),
}
TARGET_RATIO = 2.5  # issue 12: a meta step costs at most 2.5× a ce step


def build(model_name: str, method: str, device: str, *, n_train: int = 512, seed: int = 0):
    """(ctx, method instance or None for ce) with start() done."""
    import torch

    from engine.methods import get_method
    from engine.train.context import TensorData, TrainContext

    size, chans, batch = MODELS[model_name]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if model_name == "digits-mlp":
        x, y = load_digits_u8()
        model = TinyNet()
        mean, std = digits_stats(x)
        train_x, train_y, meta_x, meta_y = (
            x[:n_train],
            y[:n_train],
            x[n_train : n_train + 100],
            y[n_train : n_train + 100],
        )
    else:
        import timm

        model = timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES)
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        train_x = rng.integers(0, 256, (n_train, chans, size, size), dtype=np.uint8)
        train_y = rng.integers(0, NUM_CLASSES, n_train)
        meta_x = rng.integers(0, 256, (100, chans, size, size), dtype=np.uint8)
        meta_y = np.arange(100) % NUM_CLASSES
    ctx = TrainContext(
        model=model,
        num_classes=NUM_CLASSES,
        train=TensorData(train_x, train_y),
        meta=TensorData(meta_x, meta_y),
        mean=mean,
        std=std,
        device=device,
        batch_size=batch,
        seed=seed,
        epochs=30,
        warmup_epochs=10,
        lr=1e-3,
        milestones=(10, 20),
    )
    if method == "ce":
        return ctx, None
    name, _, opts = method.partition(":")  # e.g. "mslg:meta_jvp=finite-difference"
    cls = get_method(name)
    params = dict(kv.split("=", 1) for kv in opts.split(",") if kv)
    m = cls(cls.config_cls(**params), ctx)
    m.start()
    if hasattr(m, "check"):  # steady state: the look-ahead check adds a meta forward to the first 10 steps only
        m.check.steps_left = 0
    return ctx, m


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def run_steps(ctx, method, n_steps: int, epoch: int, clock: str = "wall") -> list[float]:
    """Run one epoch capped at n_steps; return the duration of each step (seconds) on `clock`."""
    from engine.train.steps import ce_epoch

    now = CLOCKS[clock]
    stamps: list[float] = []
    ctx.on_step = lambda record: stamps.append(now())
    ctx.max_steps = n_steps
    t0 = now()
    if method is None:
        ce_epoch(ctx, epoch, stage="main")
    else:
        method.train_epoch(epoch)
    if ctx.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return list(np.diff([t0, *stamps]))


def time_methods(model_name: str, methods: list[str], device: str, *, steps: int, warmup: int, rounds: int,
                 clock: str = "wall") -> dict:
    n_train = max(512, (warmup + steps) * MODELS[model_name][2])  # every call gets warmup + steps batches
    built = {m: build(model_name, m, device, n_train=n_train) for m in ["ce", *methods]}
    times: dict[str, list[float]] = {m: [] for m in built}
    for r in range(rounds):
        for m, (ctx, inst) in built.items():
            d = run_steps(ctx, inst, warmup + steps, epoch=10 + r, clock=clock)
            times[m] += d[warmup:]
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        m: {
            "ms_per_step": 1000 * med[m],
            "time_ratio": med[m] / med["ce"],
            "n_steps": len(times[m]),
            "ms_iqr": [1000 * float(np.percentile(times[m], 25)), 1000 * float(np.percentile(times[m], 75))],
        }
        for m in built
    }


def child_memory(model_name: str, method: str, device: str, steps: int) -> dict:
    """In a fresh process: extra peak memory of `steps` training steps over the set-up state."""
    import torch

    ctx, inst = build(model_name, method, device, n_train=max(512, steps * MODELS[model_name][2]))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_steps(ctx, inst, steps, epoch=10)
        return {"peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20, "how": "cuda max_memory_allocated"}
    if _proc_status("VmHWM") is None:  # not Linux: ru_maxrss (inherits the parent's peak across fork+exec)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_steps(ctx, inst, steps, epoch=10)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_mb": (after - before) / 1024, "how": "ru_maxrss delta"}
    try:  # reset the peak-RSS mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        how = "VmHWM after steps − VmRSS before (peak reset via clear_refs)"
    except OSError:
        how = "VmHWM after steps − VmRSS before (fresh process; peak not reset)"
    before = _proc_status("VmRSS")
    run_steps(ctx, inst, steps, epoch=10)
    return {"peak_mb": (_proc_status("VmHWM") - before) / 1024, "how": how}


def _proc_status(field: str) -> int | None:
    """A kB value from /proc/self/status (VmRSS, VmHWM), None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory(model_name: str, method: str, device: str, steps: int, threads: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.step_cost",
        "--child",
        model_name,
        method,
        "--device",
        device,
        "--steps",
        str(steps),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(results: dict, device: str) -> str:
    lines = [
        "| model | method | ms/step (median) | time ratio to ce | peak MB (steps) | memory ratio to ce |",
        "|---|---|---|---|---|---|",
    ]
    for model_name, rows in results.items():
        ce_mb = rows["ce"].get("peak_mb")
        for m, r in rows.items():
            mb = r.get("peak_mb")
            mem_ratio = f"{mb / ce_mb:.2f}×" if (mb is not None and ce_mb and ce_mb > 0.5) else "—"
            ok = "" if m == "ce" else (" ✓" if r["time_ratio"] <= TARGET_RATIO else f" ✗ (> {TARGET_RATIO:g}×)")
            lines.append(
                f"| {model_name} | {m} | {r['ms_per_step']:.1f} | {r['time_ratio']:.2f}×{ok} | "
                f"{'—' if mb is None else f'{mb:.1f}'} | {mem_ratio} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="time and peak memory of a meta step over a ce step")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="registered methods to compare with ce (default: mslg, metalabelnet, mlc where registered); "
        "NAME:FIELD=VALUE sets a string hyper-parameter, e.g. mslg:meta_jvp=finite-difference",
    )
    p.add_argument("--steps", type=int, default=6, help="timed steps per round (median over all rounds)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every call")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the methods")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on shared cores a multi-threaded step stalls whenever one thread "
        "waits for a core, which makes timings erratic)",
    )
    p.add_argument("--clock", choices=list(CLOCKS), default=None,
                   help="wall (time.perf_counter) or process (CPU time of this process: with 1 torch thread it "
                   "is what a step computes, unaffected by other jobs on shared cores) [process on CPU, wall on CUDA]")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--quick", action="store_true", help="smoke test: digits model, 2 steps, 1 round")
    p.add_argument("--json", type=Path, default=OUT / "step_cost.json")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_memory(*args.child, args.device, args.warmup + args.steps)))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    from engine.methods import list_methods

    registered = list_methods()
    methods = args.methods or [m for m in META_METHODS if m in registered]
    if args.quick:
        args = replace_args(args, models=["digits-mlp"], steps=2, warmup=1, rounds=1)
    if args.clock is None:
        args = replace_args(args, clock="wall" if args.device.startswith("cuda") else "process")
    t0 = time.time()
    results = {}
    for model_name in args.models:
        results[model_name] = time_methods(
            model_name, methods, args.device, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
            clock=args.clock)
        if not args.no_memory:
            for m in results[model_name]:
                results[model_name][m].update(memory(model_name, m, args.device, args.steps, args.threads))
    env = environment(args.device)
    meta = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "environment": env,
        "models": {m: dict(zip(("image_size", "channels", "batch_size"), MODELS[m], strict=True)) for m in args.models},
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "threads": args.threads,
        "clock": args.clock,
        "wall_seconds": time.time() - t0,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    where = env.get("gpu") or f"{env['cpu']}, {env['cores']} cores, {args.threads} torch threads"
    print(
        f"Step cost, {meta['date']}: {where}; torch {env['torch']}, timm {env['timm']}; median of "
        f"{args.rounds}×{args.steps} steps after {args.warmup} warm-up steps per call; {args.clock} clock.\n"
    )
    print(markdown(results, args.device))
    print(f"\nraw JSON: {args.json}")
    return 0


def replace_args(args, **kw):
    ns = argparse.Namespace(**vars(args))
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


if __name__ == "__main__":
    raise SystemExit(main())
