"""Review simulation: reviewed labels flow back into the pipeline; which review order improves labels and model most?

Data: the synthetic fundus panel `panel-30` (bench/fundus.py): three simulated experts whose majority is wrong on 30 %
of the training images, a clean meta set of 10 images per class, a held-out test set with the true labels. The cell
is written as an ordinary dataset folder (PNG images, votes.csv with preset roles; the test images are graded by a
`reference` column holding the truth, the panel grades the rest) and trained with the real CLI, in process.

Protocol per seed: a first run (`python -m engine run`); then, for each ordering, rounds: a simulated reviewer who
answers with the truth reviews 5 % of the training images, chosen by the ordering from the latest run, and the
pipeline retrains with every review so far (`--reviewed`, warm-started `--from-run` the latest run). Orderings:
  - `random`: a seeded random sample of the unreviewed training images;
  - `flag_score`: the latest run's queue order, P(majority wrong) (the order before this feature);
  - `active`: expected value of a review (engine/active.py), refreshed without retraining after every fifth of a
    round (`engine.active.refresh`: the estimator re-run with the decisions so far);
and a `control` chain: the same warm retrains with no review at all, so that what retraining alone changes (the fold
networks are re-selected on a few meta images) is not credited to the reviews ("Δ vs control", paired by seed).
Measured after every round: label recovery = share of training images whose label in labels.csv (the argmax of
p:<class>; verified images are one-hot on the reviewed label) is the truth; test accuracy of the run's model (metrics.json);
the export's accuracy (reviewed label, else the experts' majority); the realised precision of the reviewed flagged
images vs the predicted one (engine/flag_precision.py); wall time of each run (the retrain cost ratio).

    .venv/bin/python -m bench.review_sim                 # 3 seeds, 4 rounds, 12–18 min on 2 CPU cores
    .venv/bin/python -m bench.review_sim --quick         # smoke test (CI): 1 seed, 2 rounds, tiny data
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from engine.config import RuntimeConfig

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "review_sim"
ORDERINGS = ("random", "flag_score", "active")
CONTROL = "control"  # the same chain of warm retrains with no reviews: what retraining alone changes
CHAINS = (CONTROL, *ORDERINGS)
CLASSES = ("normal", "pre-plus", "plus")


@dataclass(frozen=True)
class Setup:
    n: int = 2000  # images (test 400, meta 30, train 1570), as in bench/label_bench.py
    size: int = 48  # px
    rounds: int = 4  # review rounds after the first run
    round_frac: float = 0.05  # share of the training images reviewed per round
    batches: int = 5  # the active order is refreshed after each batch of a round
    method: str = RuntimeConfig.method  # what a user gets: the engine's default
    backbone: str = "test_resnet"
    epochs: int = 15  # the scratch recipe's
    warmup_epochs: int = 5
    folds: int = 2
    max_steps: int = 0


QUICK = Setup(n=600, size=32, rounds=2, epochs=3, warmup_epochs=1, batches=2)


# ----------------------------------------------------------------------------------------------- the dataset


def write_dataset(seed: int, setup: Setup, root: Path) -> dict:
    """The panel-30 cell as a dataset folder; returns {"truth": {image: class}, "train": [...], "majority": {...}}."""
    from PIL import Image

    from bench.fundus import make_cell, scenario
    from engine.data.cache import ImageCache

    cell = make_cell(scenario("panel-30"), seed, n=setup.n, size=setup.size)
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    role = np.full(setup.n, "", dtype=object)
    role[cell.train], role[cell.meta], role[cell.test] = "train", "meta", "test"
    lines = ["image,role,e1,e2,e3,reference"]
    names = []
    for i in range(setup.n):
        name = f"img/{i:05d}.png"
        names.append(name)
        if not (root / name).is_file():
            Image.fromarray(cell.images[i]).save(root / name)
        votes = [CLASSES[v] if v >= 0 else "" for v in cell.votes[i]]
        reference = CLASSES[cell.truth[i]] if role[i] == "test" else ""
        lines.append(",".join([name, role[i], *votes, reference]))
    (root / "votes.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # decode once, so the first run's time does not include it (every later run reads the same cache)
    ImageCache(root / ".cache").load_many([root / n for n in names], setup.size)
    majority = cell.majority
    return {"truth": {names[i]: CLASSES[cell.truth[i]] for i in range(setup.n)},
            "train": [names[i] for i in cell.train],
            "majority": {names[i]: CLASSES[majority[i]] for i in cell.train}}


# ----------------------------------------------------------------------------------------------- runs


def _engine(argv: list[str]) -> dict:
    """`python -m engine run ...` in this process (the CLI's parser and config, without its SIGTERM handler); returns
    its wall time and this process's CPU time in seconds (one torch thread: CPU time is the compute it cost, whatever
    else the shared machine runs)."""
    from engine.cli import build_parser
    from engine.commands.run import config_from_args
    from engine.pipeline import run

    args = build_parser("run").parse_args(["run", *argv])
    t0, c0 = time.time(), time.process_time()
    run(config_from_args(args))
    return {"wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}


def first_run(seed: int, setup: Setup, ds: Path, out: Path) -> dict:
    return _engine([str(ds), "--out", str(out), "--method", setup.method, "--classes", ",".join(CLASSES),
                    "--backbone", setup.backbone, "--image-size", str(setup.size), "--recipe", "scratch",
                    "--epochs", str(setup.epochs), "--warmup-epochs", str(setup.warmup_epochs), "--folds",
                    str(setup.folds), "--seed", str(seed), "--device", "cpu", "--max-steps", str(setup.max_steps)])


def measure(run: Path, truth: dict, train: list[str], majority: dict, reviewed: dict) -> dict:
    import pandas as pd

    from engine.data import schema as S

    labels = pd.read_csv(run / "labels.csv", keep_default_na=False).set_index(S.IMAGE)
    metrics = json.loads((run / "metrics.json").read_text())
    classes = metrics["classes"]
    post = labels.loc[train, [S.prob_col(c) for c in classes]].to_numpy(float)
    est = [classes[k] for k in post.argmax(1)]
    true = [truth[i] for i in train]
    export = [reviewed.get(i, majority[i]) for i in train]
    return {"recovery": float(np.mean([a == b for a, b in zip(est, true, strict=True)])),
            "export_acc": float(np.mean([a == b for a, b in zip(export, true, strict=True)])),
            "test_acc": metrics.get("test_acc"), "meta_acc": metrics.get("meta_acc"),
            "n_flagged_train": int(labels.loc[train, S.FLAG].astype(int).sum()),
            "run_wall_s": metrics.get("wall_time_s"), "epochs": len(metrics.get("history", []))}


def pick(ordering: str, run: Path, pool: list[str], budget: int, truth: dict, *, seed: int, rnd: int,
         batches: int) -> list[str]:
    """The images the simulated reviewer looks at this round (`budget` of `pool`, the unreviewed training images)."""
    import pandas as pd

    from engine.active import refresh

    if ordering == CONTROL:
        return []
    if ordering == "random":
        rng = np.random.default_rng([seed, 77, rnd])
        return [pool[i] for i in rng.permutation(len(pool))[:budget]]
    if ordering == "flag_score":
        labels = pd.read_csv(run / "labels.csv", keep_default_na=False).set_index("image")
        score = labels.loc[pool, "flag_score"].to_numpy(float)
        return [pool[i] for i in np.argsort(-score, kind="stable")[:budget]]
    chosen: list[str] = []
    sizes = [len(a) for a in np.array_split(np.arange(budget), batches)]
    for size in sizes:  # refresh the estimate with this round's decisions so far, then take the next batch
        fresh = refresh(run, {img: truth[img] for img in chosen})
        value = dict(zip(fresh.images, fresh.value, strict=True))
        left = [img for img in pool if img not in set(chosen)]
        scores = np.array([value[img] for img in left])
        chosen += [left[i] for i in np.argsort(-scores, kind="stable")[:size]]
    return chosen


def precision_of(run: Path, decided: dict) -> dict:
    """Realised vs predicted precision of `run`'s flags on the images reviewed from it."""
    import pandas as pd

    from engine.export import read_labels
    from engine.flag_precision import flag_precision

    labels, _ = read_labels(run / "labels.csv")
    return flag_precision(labels, pd.DataFrame({"image": list(decided), "new_label": list(decided.values())}))


def chain(args: tuple) -> list[dict]:
    """One (seed, ordering): rounds of review + warm retrain from the seed's first run."""
    seed, ordering, setup, root = args
    _threads()
    data = json.loads((root / f"seed{seed}" / "cell.json").read_text())
    truth, train, majority = data["truth"], data["train"], data["majority"]
    prev = root / f"seed{seed}" / "run0"
    budget = int(round(setup.round_frac * len(train)))
    reviewed: dict[str, str] = {}
    rows = []
    for rnd in range(1, setup.rounds + 1):
        pool = [img for img in train if img not in reviewed]
        new = pick(ordering, prev, pool, budget, truth, seed=seed, rnd=rnd, batches=setup.batches)
        decided = {img: truth[img] for img in new}
        prec = precision_of(prev, decided)
        reviewed.update(decided)
        folder = root / f"seed{seed}" / ordering
        folder.mkdir(parents=True, exist_ok=True)
        csv = folder / f"reviewed{rnd}.csv"
        csv.write_text("image,label\n" + "".join(f"{i},{c}\n" for i, c in reviewed.items()), encoding="utf-8")
        out = folder / f"run{rnd}"
        cost = _engine(["--out", str(out), "--from-run", str(prev), "--reviewed", str(csv),
                           "--max-steps", str(setup.max_steps)])
        row = {"seed": seed, "ordering": ordering, "round": rnd, "reviewed": len(reviewed),
               "reviewed_frac": len(reviewed) / len(train), "changed": sum(truth[i] != majority[i] for i in new),
               **cost, "precision": prec, **measure(out, truth, train, majority, reviewed)}
        rows.append(row)
        prev = out
    return rows


def start(args: tuple) -> dict:
    seed, setup, root = args
    _threads()
    folder = root / f"seed{seed}"
    data = write_dataset(seed, setup, folder / "dataset")
    (folder / "cell.json").write_text(json.dumps(data))
    cost = first_run(seed, setup, folder / "dataset", folder / "run0")
    row = {"seed": seed, "ordering": "none", "round": 0, "reviewed": 0, "reviewed_frac": 0.0, "changed": 0,
           **cost, **measure(folder / "run0", data["truth"], data["train"], data["majority"], {})}
    return row


def _threads() -> None:
    import torch

    torch.set_num_threads(1)


def _map(fn, items, workers: int):
    if workers > 1 and len(items) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            return pool.map(fn, items, chunksize=1)
    return [fn(i) for i in items]


# ----------------------------------------------------------------------------------------------- report


def _ms(values) -> str:
    v = np.asarray([x for x in values if x is not None], float)
    if len(v) == 0:
        return "—"
    return f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1):.1f}" if len(v) > 1 else f"{100 * v.mean():.1f}"


def summarise(rows: list[dict], setup: Setup, seeds: list[int]) -> dict:
    base = {r["seed"]: r for r in rows if r["round"] == 0}
    out = {}
    at = {(r["ordering"], r["seed"], r["round"]): r for r in rows}
    for o in CHAINS:
        for rnd in range(setup.rounds + 1):
            sel = [base[s] for s in seeds] if rnd == 0 else [r for r in rows if r["ordering"] == o and r["round"] == rnd]
            ctrl = [base[r["seed"]] if rnd == 0 else at[(CONTROL, r["seed"], rnd)] for r in sel]
            out[(o, rnd)] = {
                "recovery": [r["recovery"] for r in sel], "test_acc": [r["test_acc"] for r in sel],
                "export_acc": [r["export_acc"] for r in sel],
                "d_recovery": [r["recovery"] - base[r["seed"]]["recovery"] for r in sel],
                "d_test": [r["test_acc"] - base[r["seed"]]["test_acc"] for r in sel],
                # what the reviews did: minus the no-review retrain of the same seed and round (paired)
                "r_recovery": [r["recovery"] - c["recovery"] for r, c in zip(sel, ctrl, strict=True)],
                "r_test": [r["test_acc"] - c["test_acc"] for r, c in zip(sel, ctrl, strict=True)],
            }
    return out


def markdown(rows: list[dict], setup: Setup, seeds: list[int]) -> str:
    s = summarise(rows, setup, seeds)
    lines = ["| ordering | round | reviewed | label recovery % | Δ vs first run | Δ vs control | test accuracy % | "
             "Δ vs first run | Δ vs control | export accuracy % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for o in CHAINS:
        for rnd in range(setup.rounds + 1):
            c = s[(o, rnd)]
            reviewed = 0 if o == CONTROL else rnd * setup.round_frac
            lines.append(f"| {o} | {rnd} | {100 * reviewed:.0f} % | {_ms(c['recovery'])} | {_ms(c['d_recovery'])} | "
                         f"{_ms(c['r_recovery'])} | {_ms(c['test_acc'])} | {_ms(c['d_test'])} | {_ms(c['r_test'])} | "
                         f"{_ms(c['export_acc'])} |")
    lines.append("")
    lines.append("(Δ in points, paired by seed; \"vs control\": minus the no-review retrain of the same seed and round, "
                 "i.e. what the reviews did beyond retraining.)")
    first = {r["seed"]: r for r in rows if r["round"] == 0}
    warm = [r for r in rows if r["round"] > 0]
    cpu = [w["cpu_s"] / first[w["seed"]]["cpu_s"] for w in warm]
    wall = [w["wall_s"] / first[w["seed"]]["wall_s"] for w in warm]
    lines.append("")
    lines.append(f"Retrain cost (`--from-run`), {len(warm)} retrains / their seed's first run: CPU time mean "
                 f"{np.mean(cpu):.2f} (max {np.max(cpu):.2f}); wall time mean {np.mean(wall):.2f} (max {np.max(wall):.2f}, "
                 f"load of the shared machine included). First run {np.mean([f['cpu_s'] for f in first.values()]):.0f} "
                 f"CPU s, retrain {np.mean([w['cpu_s'] for w in warm]):.0f} CPU s on average; epochs "
                 f"{first[next(iter(first))]['epochs']} → {warm[0]['epochs']}.")
    k = min(2, setup.rounds)  # the checkpoint: after 10 % of the training images
    for key, what in (("d", "vs the first run"), ("r", "vs the no-review control")):
        gain = {o: np.mean(s[(o, k)][f"{key}_recovery"]) for o in ORDERINGS}
        test = {o: np.mean(s[(o, k)][f"{key}_test"]) for o in ORDERINGS}
        ratio = gain["active"] / gain["random"] if gain["random"] > 0 else float("nan")
        per_seed = [a / r if r > 0 else float("nan")
                    for a, r in zip(s[("active", k)][f"{key}_recovery"], s[("random", k)][f"{key}_recovery"], strict=True)]
        test_up = sum(t > 0 for t in s[("active", k)][f"{key}_test"])
        lines.append(f"After {100 * k * setup.round_frac:.0f} % reviewed, {what}: recovery active "
                     f"{100 * gain['active']:+.1f} pts, flag_score {100 * gain['flag_score']:+.1f}, random "
                     f"{100 * gain['random']:+.1f} (active / random = {ratio:.1f}× on the means; per seed "
                     f"{', '.join(f'{x:.1f}×' for x in per_seed)}); test accuracy active "
                     f"{100 * test['active']:+.1f} (up on {test_up}/{len(per_seed)} seeds), flag_score "
                     f"{100 * test['flag_score']:+.1f}, random {100 * test['random']:+.1f}.")
    prec = [r["precision"] for r in warm if r["precision"]["reviewed_flagged"]]
    if prec:
        lines.append("Flag precision on the reviewed flagged images (realised vs predicted, per ordering, all rounds): " +
                     "; ".join(f"{o} {_pool(prec_o, 'changed_flagged', 'reviewed_flagged')} vs "
                               f"{100 * np.mean([p['predicted_precision'] for p in prec_o]):.0f} %"
                               for o in ORDERINGS
                               if (prec_o := [r["precision"] for r in warm if r["ordering"] == o
                                              and r["precision"]["reviewed_flagged"]])) + ".")
    return "\n".join(lines)


def _pool(precs: list[dict], num: str, den: str) -> str:
    n, d = sum(p[num] for p in precs), sum(p[den] for p in precs)
    return f"{100 * n / d:.0f} % ({n}/{d})"


def plot(rows: list[dict], setup: Setup, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(rows, setup, seeds)
    x = [100 * r * setup.round_frac for r in range(setup.rounds + 1)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, key, title in ((axes[0], "recovery", "label recovery (training images)"),
                           (axes[1], "test_acc", "test accuracy (held-out, true labels)")):
        for o, style in zip(CHAINS, (":", "o--", "s-.", "D-"), strict=True):
            vals = [np.asarray(s[(o, r)][key], float) for r in range(setup.rounds + 1)]
            mean = np.array([100 * v.mean() for v in vals])
            err = np.array([100 * v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals])
            ax.errorbar(x, mean, yerr=err, fmt=style, capsize=3, label=o if o != CONTROL else "no reviews (control)",
                        color="grey" if o == CONTROL else None)
        ax.set_xlabel("training images reviewed (%)")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Review simulation, panel-30 fundus, {len(seeds)} seed(s) (mean ± sd)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    from bench.common import environment

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 600 images at 32 px, 3 epochs, 2 rounds")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes")
    p.add_argument("--out", type=Path, default=OUT, help="folder for datasets, runs and the raw JSON")
    p.add_argument("--plot", type=Path, default=None, help="PNG to write (default: OUT/review_sim.png)")
    p.add_argument("--results", type=Path, default=None, help="write the table into this Markdown file")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--n", type=int, default=None, help="images per seed")
    p.add_argument("--method", default=None, help=f"label-noise method (default: the engine's, {Setup.method})")
    args = p.parse_args(argv)
    setup = QUICK if args.quick else Setup()
    if args.quick:
        args.seeds = args.seeds[:1]
    setup = replace(setup, **{k: v for k, v in (("rounds", args.rounds), ("n", args.n), ("method", args.method))
                              if v is not None})
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = list(_map(start, [(s, setup, root) for s in args.seeds], args.workers))
    print(f"first runs done in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    for chain_rows in _map(chain, [(s, o, setup, root) for s in args.seeds for o in CHAINS], args.workers):
        rows += chain_rows
    wall = time.time() - t0
    env = environment("cpu")
    meta = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "environment": env,
            "seeds": args.seeds, "setup": asdict(setup), "workers": args.workers, "wall_seconds": wall}
    (root / "review_sim.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    header = (f"Review simulation, {meta['date']}: {env['cpu']}, {env['cores']} cores, {args.workers} workers × 1 torch "
              f"thread; torch {env['torch']}, timm {env['timm']}; seeds {args.seeds}; {setup.n} images at {setup.size} px, "
              f"{setup.backbone}, method {setup.method}, {setup.epochs} epochs ({setup.warmup_epochs} warm-up), "
              f"{setup.folds} folds; wall {wall / 60:.1f} min.\n")
    table = markdown(rows, setup, args.seeds)
    png = args.plot or root / "review_sim.png"
    plot(rows, setup, args.seeds, png)
    print(header)
    print(table)
    print(f"raw JSON: {root / 'review_sim.json'}; plot: {png}")
    if args.results:
        args.results.write_text(header + "\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
