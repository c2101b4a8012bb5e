"""Label-noise benchmark on scikit-learn's 8×8 digits: every registered method + two strong baselines.

    .venv/bin/python -m bench.noise_bench                    # full run (see bench/README.md for its cost)
    .venv/bin/python -m bench.noise_bench --quick            # smoke test (seconds)
    .venv/bin/python -m bench.noise_bench --methods ce mslg --noise-types panel --rates 0.6 0.8 --seeds 0 1 2

Per (noise type, rate, seed) the split (100 clean meta images = 10/class, 500 test, 1197 train) and the noisy
training labels are fixed; every method trains a fresh TinyNet (same init per seed) through the engine's
`engine.train.loop.fit` (warm-up CE on the noisy labels, then the method's main phase, model selection by meta
accuracy). Reported: test accuracy of the selected model, label recovery (argmax of `FitState.best_soft_labels`
== true label, training rows), flag precision/recall against the truly wrong labels (flag rule below), and
diagnostics for the meta-learning methods (how far soft labels moved from the noisy labels, what warm-up memorised).

Baselines outside the registry: `ce+finetune` (the selected `ce` model fine-tuned on the meta set) and
`meta-only` (a fresh model trained on the meta set alone). Neither can select by meta accuracy (they train on the
meta set), so both keep their last epoch.

Flag rule: the product's own `engine.flags.flag_images` (suggestion ≠ majority, or split vote with top p < 0.6).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import NOISE_TYPES, NUM_CLASSES, TinyNet, digits_stats, environment, make_noisy_labels, split_digits  # noqa: E402

OUT = ROOT / "bench" / "out"
BASELINES = ("ce+finetune", "meta-only")
DEFAULT_RATES = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class Schedule:
    """Shared by every method (documented in RESULTS.md). Paper values in brackets (ROP study)."""

    epochs: int = 30  # [30] total incl. warm-up
    warmup_epochs: int = 10  # [10]
    milestones: tuple[int, ...] = (10, 20)  # [(10, 20)]: lr / 10 at the end of warm-up and again
    lr: float = 0.01  # [1e-3 for a pretrained ResNet50]; from-scratch MLP, chosen on meta accuracy (README)
    batch_size: int = 32  # [16]; 32 halves the step count (and the benchmark's wall time) on 2 cores
    momentum: float = 0.9  # [0.9]
    weight_decay: float = 1e-4  # [1e-4]
    finetune_epochs: int = 10  # ce+finetune: epochs on the meta set
    finetune_lr: float = 0.001  # ce+finetune: lr/10 ("small lr")
    meta_only_epochs: int = 300  # meta-only: 300 × 4 steps on the 100 meta images ≈ the others' 30 × 38 steps
    meta_per_class: int = 10
    test: int = 500


def flag_rule(soft: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, str]:
    """(N,) bool flags from the product's own rule (`engine.flags.flag_images`): suggestion != majority, or a
    split vote with an uncertain soft label (every training row counts as split: no row is a known consensus)."""
    from engine.flags import flag_images

    n = len(noisy)
    out = flag_images(soft, noisy, consensus=np.zeros(n, bool), tie=np.zeros(n, bool),
                      classes=[str(k) for k in range(soft.shape[1])])
    return out["flag"].to_numpy().astype(bool), "engine.flags.flag_images (default threshold 0.6)"


def _ctx(
    model,
    train_x,
    train_y,
    meta_x,
    meta_y,
    test_x,
    test_y,
    sched: Schedule,
    seed: int,
    *,
    epochs=None,
    warmup=None,
    milestones=None,
    lr=None,
):
    from engine.train.context import TensorData, TrainContext

    mean, std = digits_stats(train_x)
    return TrainContext(
        model=model,
        num_classes=NUM_CLASSES,
        train=TensorData(train_x, train_y),
        meta=TensorData(meta_x, meta_y),
        test=TensorData(test_x, test_y),
        mean=mean,
        std=std,
        device="cpu",
        batch_size=sched.batch_size,
        seed=seed,
        epochs=sched.epochs if epochs is None else epochs,
        warmup_epochs=sched.warmup_epochs if warmup is None else warmup,
        lr=sched.lr if lr is None else lr,
        milestones=tuple(sched.milestones if milestones is None else milestones),
        momentum=sched.momentum,
        weight_decay=sched.weight_decay,
        amp=False,
        flip=False,
    )


def _model(seed: int):
    import torch

    torch.manual_seed(seed)
    return TinyNet()


def _scores(soft: np.ndarray, noisy: np.ndarray, truth: np.ndarray) -> dict:
    flags, rule = flag_rule(soft, noisy)
    wrong = noisy != truth
    tp = int((flags & wrong).sum())
    moved = 1.0 - soft[np.arange(len(noisy)), noisy]  # total-variation distance to onehot(noisy label)
    return {
        "recovery": float((soft.argmax(1) == truth).mean()),
        "flag_precision": tp / int(flags.sum()) if flags.any() else float("nan"),
        "flag_recall": tp / int(wrong.sum()) if wrong.any() else float("nan"),
        "flag_rate": float(flags.mean()),
        "flag_rule": rule,
        "moved_wrong": float(moved[wrong].mean()) if wrong.any() else float("nan"),
        "moved_right": float(moved[~wrong].mean()) if (~wrong).any() else float("nan"),
    }


def run_method(name: str, data: dict, sched: Schedule, seed: int, overrides: dict | None = None) -> dict:
    """Train one registered method through engine.train.loop.fit; returns metrics (+ the ce model for finetune)."""
    from engine.methods import get_method
    from engine.train.loop import fit, restore_best

    t0 = time.time()
    ctx = _ctx(
        _model(seed),
        data["train_x"],
        data["noisy"],
        data["meta_x"],
        data["meta_y"],
        data["test_x"],
        data["test_y"],
        sched,
        seed,
    )
    cls = get_method(name)
    cfg = replace(cls.config_cls(), **(overrides or {}))
    method = cls(cfg, ctx)
    warm = {}

    def on_epoch_end(state):
        if state.epoch == ctx.warmup_epochs - 1:  # end of warm-up: what did CE memorise?
            pred = ctx.predict_train().argmax(1).numpy()
            wrong = data["noisy"] != data["train_y"]
            warm["warmup_memorised"] = float((pred[wrong] == data["noisy"][wrong]).mean()) if wrong.any() else 0.0
            warm["warmup_recovery_on_wrong"] = (
                float((pred[wrong] == data["train_y"][wrong]).mean()) if wrong.any() else 1.0
            )
            warm["warmup_test_acc"] = ctx.accuracy(ctx.test)
            warm["warmup_meta_acc"] = ctx.accuracy(ctx.meta)

    state = fit(ctx, method, on_epoch_end=on_epoch_end)
    model = restore_best(ctx, method, state)
    soft = state.best_soft_labels.numpy()
    out = {
        "test_acc": ctx.accuracy(ctx.test, model),
        "meta_acc": float(state.best_meta_acc),
        "best_epoch": state.best_epoch,
        **_scores(soft, data["noisy"], data["train_y"]),
        **warm,
        "seconds": time.time() - t0,
        "config": asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else {},
    }
    if name == "ce":
        out["_model"] = model
    return out


def _train_plain(ctx, epochs: int, lr_fn) -> None:
    from engine.train.steps import ce_epoch

    for epoch in range(epochs):
        lr = lr_fn(epoch)
        for g in ctx.optimizer.param_groups:
            g["lr"] = lr
        ce_epoch(ctx, epoch, stage="baseline")


def _meta_set_ctx(model, data: dict, sched: Schedule, seed: int, **kw):
    """A context that trains on the meta set (the baselines), evaluated on the test set."""
    return _ctx(model, data["meta_x"], data["meta_y"], data["meta_x"], data["meta_y"], data["test_x"],
                data["test_y"], sched, seed, **kw)


def run_finetune(ce_model, data: dict, sched: Schedule, seed: int) -> dict:
    """ce+finetune: the selected ce model, `finetune_epochs` of CE on the meta set at `finetune_lr`; last epoch."""
    t0 = time.time()
    model = copy.deepcopy(ce_model).train()
    ctx = _meta_set_ctx(model, data, sched, seed, lr=sched.finetune_lr)
    _train_plain(ctx, sched.finetune_epochs, lambda e: sched.finetune_lr)
    return _eval_plain(ctx, model, data, t0)


def run_meta_only(data: dict, sched: Schedule, seed: int) -> dict:
    """meta-only: a fresh model trained on the meta set alone (same lr schedule, scaled to its epochs); last epoch."""
    t0 = time.time()
    model = _model(seed)
    e = sched.meta_only_epochs
    ms = [round(m * e / sched.epochs) for m in sched.milestones]
    ctx = _meta_set_ctx(model, data, sched, seed, epochs=e, warmup=e, milestones=ms)
    _train_plain(ctx, e, ctx.lr_at)
    return _eval_plain(ctx, model, data, t0)


def _eval_plain(ctx, model, data, t0) -> dict:
    from engine.train.context import TensorData

    train = TensorData(data["train_x"], data["noisy"])
    soft = ctx.predict(train, model).numpy()
    return {
        "test_acc": ctx.accuracy(ctx.test, model),
        "meta_acc": ctx.accuracy(ctx.meta, model),
        **_scores(soft, data["noisy"], data["train_y"]),
        "seconds": time.time() - t0,
    }


def run_cell(args: tuple) -> list[dict]:
    """One (noise type, rate, seed): all requested methods on the same split and noisy labels."""
    kind, rate, seed, methods, sched, overrides = args
    import torch

    torch.set_num_threads(1)
    split = split_digits(seed, meta_per_class=sched.meta_per_class, test=sched.test)
    noise = make_noisy_labels(kind, split.train_y, rate, seed, split.train_x)
    data = {
        "train_x": split.train_x,
        "train_y": split.train_y,
        "noisy": noise["labels"],
        "meta_x": split.meta_x,
        "meta_y": split.meta_y,
        "test_x": split.test_x,
        "test_y": split.test_y,
    }
    base = {
        "noise": kind,
        "rate": rate,
        "seed": seed,
        "achieved_rate": noise["rate"],
        "expert_rates": noise.get("expert_rates"),
        "tie_rate": noise.get("tie_rate"),
    }
    rows, ce_model = [], None
    order = [m for m in methods if m not in BASELINES]
    if "ce+finetune" in methods and "ce" not in order:
        order.insert(0, "ce")  # the finetune baseline starts from ce's selected model
    for name in order:
        try:
            res = run_method(name, data, sched, seed, (overrides or {}).get(name))
        except Exception as exc:  # one failing method must not sink the benchmark; the error is reported
            res = {"error": f"{type(exc).__name__}: {exc}"}
        ce_model = res.pop("_model", ce_model)
        if name in methods:
            rows.append({**base, "method": name, **res})
    if "ce+finetune" in methods:
        rows.append(
            {
                **base,
                "method": "ce+finetune",
                **(run_finetune(ce_model, data, sched, seed) if ce_model is not None else {"error": "ce failed"}),
            }
        )
    if "meta-only" in methods:
        rows.append({**base, "method": "meta-only", **run_meta_only(data, sched, seed)})
    return rows


def probe_mslg(kind: str, rate: float, seed: int, sched: Schedule, overrides: dict | None = None) -> dict:
    """How far MSLG's label variables z move in its first main epoch (after the shared warm-up).

    Returns mean/max |Δz| and the softmax saturation at the start (largest entry of ∂softmax(z)/∂z), to compare
    with the ≈ K that z must move for a label's argmax to change.
    """
    import torch

    from engine.methods import get_method
    from engine.methods.mslg import label_lr
    from engine.train.steps import ce_epoch

    torch.set_num_threads(1)
    split = split_digits(seed, meta_per_class=sched.meta_per_class, test=sched.test)
    noisy = make_noisy_labels(kind, split.train_y, rate, seed, split.train_x)["labels"]
    ctx = _ctx(_model(seed), split.train_x, noisy, split.meta_x, split.meta_y, split.test_x, split.test_y, sched, seed)
    for e in range(sched.warmup_epochs):
        ctx.set_lr(e)
        ce_epoch(ctx, e, stage="warmup")
    cls = get_method("mslg")
    cfg = replace(cls.config_cls(), **(overrides or {}))
    m = cls(cfg, ctx)
    m.start()
    z0 = m.z.clone()
    jac = torch.func.jacrev(lambda v: torch.softmax(v, 0))(z0[0])
    ctx.set_lr(sched.warmup_epochs)
    m.train_epoch(sched.warmup_epochs)
    dz = (m.z - z0).abs()
    return {
        "noise": kind,
        "rate": rate,
        "seed": seed,
        "k": cfg.k,
        "beta": cfg.beta,
        "beta_effective": label_lr(cfg.beta, ctx.batch_size, ctx.num_classes),
        "mean_abs_dz": float(dz.mean()),
        "max_abs_dz": float(dz.max()),
        "softmax_jacobian_max": float(jac.abs().max()),
        "argmax_changed": float((m.z.argmax(1) != z0.argmax(1)).float().mean()),
    }


# ---------------------------------------------------------------------------------------------------------------
# tables


def _ms(values) -> str:
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if len(v) == 0:
        return "—"
    return f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1 if len(v) > 1 else 0):.1f}"


def summarise(rows: list[dict], methods: list[str], noise_types, rates) -> dict:
    """{metric: {noise: {method: {rate: [values over seeds]}}}}."""
    out: dict = {}
    for metric in (
        "test_acc",
        "recovery",
        "flag_precision",
        "flag_recall",
        "moved_wrong",
        "moved_right",
        "warmup_memorised",
        "meta_acc",
    ):
        for r in rows:
            if "error" in r:
                continue
            out.setdefault(metric, {}).setdefault(r["noise"], {}).setdefault(r["method"], {}).setdefault(
                r["rate"], []
            ).append(r.get(metric))
    return out


def markdown_tables(rows: list[dict], methods: list[str], noise_types, rates, seeds) -> str:
    summ = summarise(rows, methods, noise_types, rates)
    lines = []
    titles = {
        "test_acc": "Test accuracy (%)",
        "recovery": "Label recovery on training rows (%)",
        "flag_precision": "Flag precision (%)",
        "flag_recall": "Flag recall (%)",
        "moved_wrong": "Soft-label movement on truly wrong rows: mean 1 − p[noisy label] (%)",
        "moved_right": "Soft-label movement on correctly labelled rows: mean 1 − p[noisy label] (%)",
    }
    lines += verdict_table(rows, methods, noise_types, [r for r in rates if r >= 0.6], len(seeds))
    achieved = {}
    for r in rows:
        achieved.setdefault((r["noise"], r["rate"]), []).append(r["achieved_rate"])
    for metric, title in titles.items():
        lines.append(f"### {title} — mean ± std over {len(seeds)} seeds\n")
        header = "| noise | method | " + " | ".join(f"{int(round(100 * r))}%" for r in rates) + " |"
        lines += [header, "|" + "---|" * (2 + len(rates))]
        for kind in noise_types:
            for m in methods:
                cells = [_ms(summ.get(metric, {}).get(kind, {}).get(m, {}).get(r, [])) for r in rates]
                lines.append(f"| {kind} | {m} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Achieved majority-label noise (mean over seeds): "
        + "; ".join(f"{k}@{int(round(100 * r))}%: {100 * np.mean(v):.1f}%" for (k, r), v in sorted(achieved.items()))
        + "\n"
    )
    errors = sorted({(r["method"], r["error"]) for r in rows if "error" in r})
    if errors:
        lines.append("Errors: " + "; ".join(f"{m}: {e}" for m, e in errors) + "\n")
    return "\n".join(lines)


META_LEARNERS = ("mslg", "metalabelnet", "mlc")


def verdict_table(rows, methods, noise_types, rates, n_seeds) -> list[str]:
    """Paired (same seed, split, labels) test-accuracy differences: meta-learner − baseline, at high noise."""
    learners = [m for m in methods if m in META_LEARNERS]
    refs = [m for m in ("ce", "ce+finetune", "meta-only") if m in methods]
    if not learners or not refs or not rates:
        return []
    acc = {(r["noise"], r["rate"], r["seed"], r["method"]): r.get("test_acc") for r in rows if "error" not in r}
    head = "| noise | rate | method | " + " | ".join(f"− {b}" for b in refs) + " |"
    lines = [
        f"### Meta-learners minus baselines, test accuracy (points), paired by seed — mean ± std over "
        f"{n_seeds} seeds (wins/seeds)\n",
        head,
        "|" + "---|" * (3 + len(refs)),
    ]
    for kind in noise_types:
        for rate in rates:
            for m in learners:
                cells = []
                for b in refs:
                    d = [
                        acc[(kind, rate, s, m)] - acc[(kind, rate, s, b)]
                        for (k, r, s, mm) in acc
                        if k == kind and r == rate and mm == m and (kind, rate, s, b) in acc
                    ]
                    cells.append(
                        f"{100 * np.mean(d):+.1f} ± {100 * np.std(d, ddof=1 if len(d) > 1 else 0):.1f} "
                        f"({sum(x > 0 for x in d)}/{len(d)})"
                        if d
                        else "—"
                    )
                lines.append(f"| {kind} | {int(round(100 * rate))}% | {m} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main(argv=None) -> int:
    from engine.methods import list_methods

    registered = list_methods()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise-types", nargs="+", default=list(NOISE_TYPES), choices=NOISE_TYPES)
    p.add_argument("--rates", type=float, nargs="+", default=list(DEFAULT_RATES))
    p.add_argument("--methods", nargs="+", default=[*registered, *BASELINES], choices=[*registered, *BASELINES])
    p.add_argument("--epochs", type=int, default=None, help="total epochs (warm-up and milestones scale with it)")
    p.add_argument("--lr", type=float, default=None, help="base SGD learning rate shared by all methods")
    p.add_argument("--meta-per-class", type=int, default=None, help="clean meta images per class (default 10)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: 1 seed, 1 rate, 3 epochs, 2 noise types")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="change a method hyper-parameter (ablations), e.g. mslg.beta=40000",
    )
    p.add_argument("--json", type=Path, default=OUT / "noise_bench.json")
    p.add_argument("--results", type=Path, default=None, help="write the tables into this Markdown file")
    p.add_argument("--from-json", type=Path, default=None, help="only re-render the tables of a saved run")
    p.add_argument(
        "--probe-mslg",
        action="store_true",
        help="only measure how far MSLG's label variables move in one main epoch (see probe_mslg)",
    )
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        m = saved["meta"]
        print(markdown_tables(saved["rows"], m["methods"], m["noise_types"], m["rates"], m["seeds"]))
        return 0

    sched = Schedule()
    if args.quick:
        args.seeds, args.rates, args.noise_types = args.seeds[:1], [0.6], ["uniform", "panel"]
        sched = replace(sched, epochs=3, warmup_epochs=1, milestones=(1, 2), finetune_epochs=2, meta_only_epochs=3)
    if args.epochs:
        f = args.epochs / sched.epochs
        sched = replace(
            sched,
            epochs=args.epochs,
            warmup_epochs=max(1, round(sched.warmup_epochs * f)),
            milestones=tuple(max(1, round(m * f)) for m in sched.milestones),
            meta_only_epochs=max(1, round(sched.meta_only_epochs * f)),
        )
    if args.lr:
        sched = replace(sched, lr=args.lr, finetune_lr=args.lr / 10)
    if args.meta_per_class:
        sched = replace(sched, meta_per_class=args.meta_per_class)
    overrides: dict = {}
    for o in args.override:
        key, val = o.split("=", 1)
        m, fld = key.split(".", 1)
        overrides.setdefault(m, {})[fld] = _number_or_text(val)

    if args.probe_mslg:
        for k in args.noise_types:
            for r in args.rates:
                for s in args.seeds:
                    print(json.dumps(probe_mslg(k, r, s, sched, overrides.get("mslg"))))
        return 0
    cells = [
        (k, r, s, args.methods, sched, overrides) for k in args.noise_types for r in args.rates for s in args.seeds
    ]
    t0 = time.time()
    rows: list[dict] = []
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers) as pool:
            for i, cell_rows in enumerate(pool.imap_unordered(run_cell, cells)):
                rows += cell_rows
                print(f"[{i + 1}/{len(cells)}] {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    else:
        for i, c in enumerate(cells):
            rows += run_cell(c)
            print(f"[{i + 1}/{len(cells)}] {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    wall = time.time() - t0
    rows.sort(key=lambda r: (r["noise"], r["rate"], r["seed"], r["method"]))
    env = environment("cpu")
    meta = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "environment": env,
        "seeds": args.seeds,
        "noise_types": args.noise_types,
        "rates": args.rates,
        "methods": args.methods,
        "schedule": asdict(sched),
        "overrides": overrides,
        "workers": args.workers,
        "wall_seconds": wall,
        "method_configs": _method_configs(args.methods, overrides),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    table = markdown_tables(rows, args.methods, args.noise_types, args.rates, args.seeds)
    header = (
        f"Noise benchmark, {meta['date']}: {env['cpu']}, {env['cores']} cores, {args.workers} workers × 1 "
        f"torch thread; torch {env['torch']}, timm {env['timm']}, scikit-learn {env['sklearn']}; "
        f"seeds {args.seeds}; {sched.epochs} epochs ({sched.warmup_epochs} warm-up); wall {wall / 60:.1f} min.\n"
    )
    print(header)
    print(table)
    print(f"raw JSON: {args.json}")
    if args.results:
        args.results.write_text(header + "\n" + table)
    return 0


def _number_or_text(val: str):
    """`--override` values: numbers as float, choices (`real_update=same-pass`) as text."""
    try:
        return float(val)
    except ValueError:
        return val


def _method_configs(methods, overrides) -> dict:
    from engine.methods import get_method

    out = {}
    for m in methods:
        if m in BASELINES:
            continue
        cfg = replace(get_method(m).config_cls(), **overrides.get(m, {}))
        out[m] = asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else {}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
