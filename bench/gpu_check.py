"""One scripted check of the whole engine on a GPU: every stage must pass, and its speed is printed.

    .venv/bin/python -m bench.gpu_check                # on a machine with one CUDA GPU: about 5 minutes
    .venv/bin/python -m bench.gpu_check --n 1000       # a smaller demo dataset

Stages, each through the command line a user runs (`python -m engine ...`), on the GPU with AMP (the default):
demo data (`--n` synthetic images, PNG + DICOM) → DR pretraining + `ce` (`--pretrain DEMO/dr_aux`) → a short run of
every other registered method from the pretrained backbone (`mslg` with the label-estimation stage, the others
with `--folds 0`) → the meta/CE step-cost ratio (`bench.step_cost`,
resnet18 @ 64 px, batch 32, in this process) → predict (PNG + DICOM) with the `mslg` model → predict 1000 images
at 224 px (a `ce` model trained briefly at 224 px) → export → time to first step of a run on the now cached dataset.

The table: stage, seconds, images/s, GPU busy % (sampled every 0.2 s with `torch.cuda.utilization()` when
pynvml is installed, else `nvidia-smi`; for training runs over the main phase only, between its first and last
step), peak GPU memory (device memory in use, MiB, from the same sampler), and a note (time to first step, the
step-cost ratios). Exit status 1 when any stage fails (the table says which and why), else 0.

Without a GPU it says so and runs the CPU equivalent of one stage (a tiny demo dataset and a short `ce` run),
exiting 0 when that passes: the CPU test suite runs it in that form (tests/bench/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out" / "gpu_check"
META_METHODS = ("mslg", "metalabelnet", "mlc")


# ---------------------------------------------------------------------------------------------------------------
# GPU sampling


class GpuSampler:
    """Samples (time, busy %, device memory MiB) every `period` seconds in a thread: pynvml through
    `torch.cuda.utilization`, else `nvidia-smi`; `available` is False when neither works."""

    def __init__(self, period: float = 0.2):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._read = self._backend()
        self.available = self._read is not None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _backend():
        import torch

        try:
            torch.cuda.utilization()
            free, total = torch.cuda.mem_get_info()
            return lambda: (float(torch.cuda.utilization()), (total - torch.cuda.mem_get_info()[0]) / 2**20)
        except Exception:  # noqa: BLE001 - no pynvml: try the command-line tool
            pass
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"]

        def smi():
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip().split(",")
            return float(out[0]), float(out[1])

        try:
            smi()
            return smi
        except Exception:  # noqa: BLE001
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), *self._read()))
            except Exception:  # noqa: BLE001 - a failed sample is skipped
                pass
            self._stop.wait(self.period)

    def start(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def window(self, t0: float, t1: float) -> tuple[float | None, float | None]:
        """(mean busy %, peak memory MiB) of the samples taken between t0 and t1 (epoch seconds)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if not inside:
            return None, None
        return sum(s[1] for s in inside) / len(inside), max(s[2] for s in inside)


# ---------------------------------------------------------------------------------------------------------------
# stages


@dataclass
class Row:
    stage: str
    ok: bool = True
    seconds: float | None = None
    images_per_s: float | None = None
    busy: float | None = None
    peak_mib: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def engine(*args: str, timeout: float = 900) -> tuple[bool, float, float, float, str]:
    """Run `python -m engine ARGS`; (ok, start, end (epoch seconds), wall seconds, the end of its stderr on one
    line)."""
    start, t0 = time.time(), time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        ok, err = proc.returncode == 0, " ".join((proc.stderr or "").split())[-300:]
    except subprocess.TimeoutExpired:
        ok, err = False, f"timed out after {timeout:.0f} s"
    return ok, start, time.time(), time.perf_counter() - t0, err


def run_stats(run_dir: Path, batch_size: int) -> dict:
    """From progress.jsonl: main-phase images/s and window, pretraining seconds, time of the first step."""
    recs = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in recs if "step" in r and r.get("event") != "epoch_end"]
    main = [r for r in steps if r.get("stage") == "main"]
    out = {"first_step": steps[0]["time"] if steps else None}
    if len(main) > 1:
        span = main[-1]["time"] - main[0]["time"]
        out.update(main_t0=main[0]["time"], main_t1=main[-1]["time"],
                   main_images_per_s=(len(main) - 1) * batch_size / span if span > 0 else None)
    pre = [r for r in recs if r.get("stage") == "pretrain"]
    if pre:
        out["pretrain_end"] = pre[-1]["time"]
    return out


def training_row(name: str, run_dir: Path, args: list[str], sampler: GpuSampler, batch_size: int) -> Row:
    ok, t0, t1, secs, err = engine("run", *args)
    row = Row(name, ok, secs)
    if not ok:
        row.note = err or "failed"
        return row
    st = run_stats(run_dir, batch_size)
    row.images_per_s = st.get("main_images_per_s")
    row.busy, row.peak_mib = sampler.window(st.get("main_t0", t0), st.get("main_t1", t1))
    if st.get("first_step"):
        row.note = f"first step after {st['first_step'] - t0:.1f} s"
    row.extra = st
    return row


def step_cost_rows(device: str) -> list[Row]:
    """The meta/CE step ratio of each meta method (resnet18 @ 64 px, batch 32, one process)."""
    from bench.step_cost import time_methods
    from engine.methods import list_methods

    methods = [m for m in META_METHODS if m in list_methods()]
    t0 = time.perf_counter()
    res = time_methods("resnet18@64", methods, device, steps=6, warmup=2, rounds=2,
                       clock="wall" if device == "cuda" else "process")
    secs = time.perf_counter() - t0
    return [Row(f"step cost {m} / ce", True, secs if m == methods[0] else None,
                note=f"{res[m]['time_ratio']:.2f}× ({res[m]['ms_per_step']:.1f} vs {res['ce']['ms_per_step']:.1f} ms)",
                extra={"ratio": res[m]["time_ratio"]}) for m in methods]


def gpu_stages(out: Path, n: int, image_size: int, epochs: int, sampler: GpuSampler) -> list[Row]:
    from bench.first_step import time_to_first_step
    from engine.methods import list_methods

    rows: list[Row] = []
    demo, runs = out / "demo", out / "runs"
    ok, t0, t1, secs, err = engine("demo-data", str(demo), "--n", str(n))
    rows.append(Row("demo data (CPU)", ok, secs, n / secs if ok else None, note="" if ok else err[-200:]))
    if not ok:
        return rows
    batch = 16
    common = ["--device", "cuda", "--image-size", str(image_size), "--epochs", str(epochs), "--warmup-epochs", "1",
              "--lr-milestones", "", "--classes", "normal,pre-plus,plus"]
    ce = runs / "ce"
    row = training_row("DR pretraining + ce", ce, [str(demo), "--out", str(ce), "--method", "ce", "--pretrain",
                                                   str(demo / "dr_aux"), *common], sampler, batch)
    rows.append(row)
    weights = ce / "pretrain.pt"
    for m in list_methods():
        if m == "ce" or not weights.is_file():
            continue
        rd = runs / m
        estimate = [] if m == "mslg" else ["--folds", "0"]  # the default method runs the estimation stage too
        rows.append(training_row(f"run {m}" + (" + estimation" if not estimate else ""), rd,
                                 [str(demo), "--out", str(rd), "--method", m, "--weights", str(weights), *common,
                                  *estimate], sampler, batch))
    try:
        rows += step_cost_rows("cuda")
    except Exception as exc:  # noqa: BLE001 - reported as a failed stage
        rows.append(Row("step cost", False, note=f"{type(exc).__name__}: {exc}"))
    model_run = runs / "mslg" if (runs / "mslg" / "model.pt").is_file() else ce
    images = demo / "images" if (demo / "images").is_dir() else demo
    n_images = sum(1 for p in images.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".dcm"))
    ok, t0, t1, secs, err = engine("predict", str(model_run), str(images), "--out", str(out / "pred.csv"))
    busy, peak = sampler.window(t0, t1)
    rows.append(Row("predict PNG + DICOM", ok, secs, n_images / secs if ok else None, busy, peak,
                    f"{n_images} images at {image_size} px" if ok else err[-200:]))
    big = runs / "ce224"
    ok, *_, err = engine("run", str(demo), "--out", str(big), "--method", "ce", "--device", "cuda", "--image-size",
                         "224", "--epochs", "1", "--warmup-epochs", "0", "--max-steps", "5", "--folds", "0")
    if ok:
        files = sorted(p for p in images.rglob("*.png"))[:1000]
        listing = out / "predict224"
        shutil.rmtree(listing, ignore_errors=True)
        listing.mkdir(parents=True)
        for i, p in enumerate(files):
            (listing / f"{i:04d}{p.suffix}").symlink_to(p)
        ok, t0, t1, secs, err = engine("predict", str(big), str(listing), "--out", str(out / "pred224.csv"))
        busy, peak = sampler.window(t0, t1)
        rows.append(Row("predict 1000 images @224", ok, secs, len(files) / secs if ok else None, busy, peak,
                        "target >= 500 img/s (start-up included)" if ok else err[-200:]))
    else:
        rows.append(Row("predict 1000 images @224", False, note=f"training the 224-px model failed: {err[-200:]}"))
    ok, t0, t1, secs, err = engine("export", str(model_run), "--out", str(out / "cleaned.csv"))
    rows.append(Row("export", ok, secs, note="" if ok else err[-200:]))
    try:
        t = time_to_first_step(demo, runs / "first-step", ["--device", "cuda", "--image-size", str(image_size)])
        rows.append(Row("time to first step (cached)", True, t["seconds"], note="target <= 15 s incl. CUDA start-up"))
    except Exception as exc:  # noqa: BLE001
        rows.append(Row("time to first step (cached)", False, note=str(exc)[-200:]))
    return rows


def cpu_stage(out: Path) -> list[Row]:
    """The CPU equivalent of one stage: a tiny demo dataset and a short `ce` run on it."""
    demo, rd = out / "demo", out / "runs" / "ce"
    ok, t0, t1, secs, err = engine("demo-data", str(demo), "--n", "150", "--n-aux", "0")
    rows = [Row("demo data (CPU)", ok, secs, 150 / secs if ok else None, note="" if ok else err)]
    if ok:
        ok, t0, t1, secs, err = engine("run", str(demo), "--out", str(rd), "--method", "ce", "--device", "cpu",
                                       "--image-size", "32", "--epochs", "1", "--warmup-epochs", "0", "--batch-size",
                                       "8", "--meta", "12", "--test", "12", "--max-steps", "2",
                                       "--classes", "normal,pre-plus,plus")
        rows.append(Row("run ce (CPU, 32 px, 2 steps)", ok, secs, note="" if ok else err))
    return rows


# ---------------------------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    lines = ["| stage | result | seconds | images/s | GPU busy % | peak GPU MiB | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.stage} | {'pass' if r.ok else 'FAIL'} | {fmt(r.seconds, '.1f')} | "
                     f"{fmt(r.images_per_s, '.0f')} | {fmt(r.busy, '.0f')} | {fmt(r.peak_mib, '.0f')} | {r.note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT, help="working folder (emptied first)")
    p.add_argument("--n", type=int, default=4000, help="demo images [4000]")
    p.add_argument("--image-size", type=int, default=64, help="training image size [64]")
    p.add_argument("--epochs", type=int, default=3, help="epochs per training run, 1 of them warm-up [3]")
    args = p.parse_args(argv)

    import torch

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    t0 = time.perf_counter()
    if not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False. Running the CPU equivalent of one stage instead.")
        rows = cpu_stage(args.out)
        device = "cpu"
    else:
        device = torch.cuda.get_device_name(0)
        print(f"GPU: {device}; torch {torch.__version__}; {args.n} demo images at {args.image_size} px")
        sampler = GpuSampler().start()
        try:
            rows = gpu_stages(args.out, args.n, args.image_size, args.epochs, sampler)
        finally:
            sampler.stop()
        if not sampler.available:
            print("note: no GPU utilisation source (install nvidia-ml-py or put nvidia-smi on PATH)")
    wall = time.perf_counter() - t0
    print(table(rows))
    failed = [r.stage for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} stages passed in {wall:.0f} s on {device}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    (args.out / "gpu_check.json").write_text(json.dumps({"device": device, "wall_seconds": wall,
                                                         "rows": [asdict(r) for r in rows]}, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
