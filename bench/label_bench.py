"""Label-noise benchmark that looks like the job: a CNN on synthetic fundus images graded by an expert panel (and
by single experts under known noise), plus real digits; the product's pipeline against the tools a user would
otherwise pick, in one table.

    .venv/bin/python -m bench.label_bench                 # full run: 3 seeds, every scenario (see bench/README.md)
    .venv/bin/python -m bench.label_bench --quick         # CI smoke test: one small cell, every row
    .venv/bin/python -m bench.label_bench --scenarios panel-30 --seeds 0 --rows pipeline ce cleanlab

Per cell (dataset, scenario, seed) everything shares the same images, votes, split and network initialisation:
  - every registered method, trained by the engine's own loop (`engine.train.loop.fit`) from one shared warm-up
    (the warm-up is cross-entropy for every method and seeded per epoch, so sharing it changes no number);
    `method:<name>` rows score the method's OWN soft labels (`FitState.best_soft_labels`, method_p: in labels.csv);
  - `pipeline:<name>` rows: the product's output for that method — the label-estimation stage (`engine.crossfit` +
    `engine.estimate` + `engine.flags`, the same functions `engine run` calls) on top of the method's run;
  - peers: `ce` (its in-sample predictions), `meta-only` (a network trained on the meta set alone), `ce+finetune`
    (= the registered method `meta-finetune`), `cleanlab` (`find_label_issues` on the out-of-sample probabilities of
    the same cross-fitted CE networks the pipeline uses; suggestion = the model's class for flagged rows), and on the
    panel `crowdlab` (`cleanlab.multiannotator`) and `dawid-skene` (crowd-kit), on the same probabilities/votes;
  - `majority`: the majority vote itself (its label recovery is the floor every method must reach).
Metrics on the training rows: label recovery (suggested class = truth), flag precision / recall / F1 for "the
majority label is wrong", number flagged vs number truly wrong; test accuracy of the row's network on the clean
held-out test set; seconds of training behind the row (shared parts included). Mean ± std (ddof=1) over seeds.
cleanlab and crowd-kit are bench-only (requirements-bench.txt; cleanlab is AGPL): never imported by engine/ or app/.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
DIGITS_SCENARIOS = ("digits-panel-30", "digits-uniform-40")


@dataclass(frozen=True)
class Setup:
    """What every cell shares (documented in RESULTS.md)."""

    n: int = 2000  # fundus images per cell (test 400, meta 10/class, the rest train)
    size: int = 48  # fundus image side (px)
    arch: str = "test_resnet"  # timm CNN (a small ResNet: the full matrix of the product's resnet18 would not fit)
    recipe: str = "scratch"  # the engine's training recipe (engine.config.RECIPES)
    epochs: int = 0  # 0 = the recipe's
    folds: int = 2  # cross-fitting folds (engine default)
    fold_budget: float = 1.0
    targets: str = "votes"  # what cross-entropy trains on: the experts' vote shares, or the majority (engine option)
    dump: str = ""  # folder for each cell's estimator inputs (.npz), for offline study
    experts: str = "correlated"  # the estimator's expert model (engine option estimate.experts)


# ---------------------------------------------------------------------------------------------------------------
# data


@dataclass
class Data:
    """One cell's data: images (N, H, W, C) uint8, truth (N,), votes (N, E) (-1 = not graded), index arrays."""

    name: str
    images: np.ndarray
    truth: np.ndarray
    votes: np.ndarray
    train: np.ndarray
    meta: np.ndarray
    test: np.ndarray
    k: int
    ordinal: bool

    @property
    def majority(self) -> np.ndarray:
        from engine.data.aggregate import MajorityVote

        return MajorityVote(tie_break="severe").fit(self.votes, self.k).labels_


def make_data(scenario: str, seed: int, setup: Setup) -> Data:
    if scenario.startswith("digits-"):
        return _digits(scenario, seed)
    from bench.fundus import K, make_cell
    from bench.fundus import scenario as fundus_scenario

    c = make_cell(fundus_scenario(scenario), seed, n=setup.n, size=setup.size)
    return Data(scenario, c.images, c.truth, c.votes, c.train, c.meta, c.test, K, True)


def _digits(scenario: str, seed: int) -> Data:
    """scikit-learn's digits at 32×32 (bilinear from 8×8), 10/class meta, 400 test; panel or uniform noise."""
    import torch
    import torch.nn.functional as F

    from bench.common import NUM_CLASSES, expert_panel, load_digits_u8, reference_probas, uniform_noise

    x, y = load_digits_u8()
    big = F.interpolate(torch.as_tensor(x, dtype=torch.float32), size=32, mode="bilinear", align_corners=False)
    images = big.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 1)
    rng = np.random.default_rng([seed, 500])
    n = len(y)
    test = np.sort(rng.choice(n, 400, replace=False))
    pool = np.setdiff1d(np.arange(n), test)
    if scenario == "digits-panel-30":
        panel = expert_panel(y[pool], 0.30, reference_probas(x[pool], y[pool], seed), seed)
        votes = np.full((n, 3), -1)
        votes[pool] = panel["votes"]
        candidates = pool[(votes[pool] == y[pool, None]).all(1)]
    else:
        votes = np.full((n, 1), -1)
        votes[pool, 0] = uniform_noise(y[pool], 0.40, rng)
        candidates = pool
    meta = np.sort(np.concatenate([rng.choice(candidates[y[candidates] == c], 10, replace=False)
                                   for c in range(NUM_CLASSES)]))
    votes[meta] = y[meta, None]
    votes[test] = -1
    return Data(scenario, images, y, votes, np.setdiff1d(pool, meta), meta, test, NUM_CLASSES, False)


# ---------------------------------------------------------------------------------------------------------------
# training through the engine


class Trainer:
    """Builds TrainContexts for one cell with the engine's recipe, and runs methods from a shared warm-up."""

    def __init__(self, data: Data, setup: Setup, seed: int):
        from engine.config import RECIPES
        from engine.train.context import TensorData

        self.data, self.setup, self.seed = data, setup, seed
        r = dict(RECIPES[setup.recipe])
        if setup.epochs:
            r["warmup_epochs"] = max(1, round(r["warmup_epochs"] * setup.epochs / r["epochs"]))
            r["epochs"] = setup.epochs
        self.r = r
        imgs = data.images
        self.channels = imgs.shape[-1]
        f = imgs.astype(np.float64) / 255.0
        self.mean = tuple(float(v) for v in f.mean((0, 1, 2)))
        self.std = tuple(float(v) for v in f.std((0, 1, 2)))
        maj = data.majority
        shares = None
        if setup.targets == "votes":
            from engine.data.aggregate import vote_counts

            counts = vote_counts(data.votes[data.train], data.k).astype(np.float32)
            shares = counts / counts.sum(1, keepdims=True)
        self.train = TensorData(imgs[data.train], maj[data.train], shares)
        self.meta = TensorData(imgs[data.meta], data.truth[data.meta])
        self.test = TensorData(imgs[data.test], data.truth[data.test])

    def model(self, stream: int):
        import timm
        import torch

        torch.manual_seed(self.seed * 1000 + stream)
        return timm.create_model(self.setup.arch, num_classes=self.data.k, in_chans=self.channels)

    def ctx(self, model, train, meta, *, epochs: int, warmup: int, seed_offset: int = 0, test=True):
        from engine.train.context import TrainContext

        r = self.r
        return TrainContext(model, self.data.k, train, meta, self.mean, self.std, device="cpu",
                            batch_size=r["batch_size"], seed=self.seed + seed_offset, epochs=epochs,
                            warmup_epochs=warmup, lr=r["lr"], lr_schedule=r["lr_schedule"],
                            milestones=tuple(int(m) for m in str(r["lr_milestones"]).split(",") if m.strip()),
                            momentum=r["momentum"], weight_decay=r["weight_decay"], amp=False,
                            flip=self.data.ordinal, test=self.test if test else None)

    def warmup(self) -> dict:
        """Run the shared warm-up once: the model/optimiser states and FitState after its last epoch."""
        from engine.methods import get_method
        from engine.train.loop import fit

        t0 = time.time()
        ctx = self.ctx(self.model(0), self.train, self.meta, epochs=self.r["warmup_epochs"],
                       warmup=self.r["warmup_epochs"])
        state = fit(ctx, get_method("ce")(get_method("ce").config_cls(), ctx))
        return {"model": copy.deepcopy(ctx.model.state_dict()), "opt": copy.deepcopy(ctx.optimizer.state_dict()),
                "state": copy.deepcopy(state), "seconds": time.time() - t0}

    def run_method(self, name: str, warm: dict) -> dict:
        """Continue from the shared warm-up with method `name`; returns its context, state, model and seconds."""
        from engine.methods import get_method
        from engine.train.loop import fit, restore_best

        t0 = time.time()
        cls = get_method(name)
        ctx = self.ctx(self.model(0), self.train, self.meta, epochs=self.r["epochs"], warmup=self.r["warmup_epochs"])
        ctx.model.load_state_dict(warm["model"])
        ctx.optimizer.load_state_dict(warm["opt"])
        cfg = cls.config_cls()
        method = cls(cfg, ctx)
        state = fit(ctx, method, state=copy.deepcopy(warm["state"]))
        model = restore_best(ctx, method, state)
        return {"ctx": ctx, "state": state, "model": model, "cfg": cfg, "cls": cls,
                "seconds": warm["seconds"] + time.time() - t0}

    def crossfit(self, cls, cfg) -> dict:
        """Out-of-sample probabilities of the training and meta rows with the engine's cross-fitting."""
        from engine.crossfit import crossfit, fold_schedule

        t0 = time.time()
        s = self.setup
        fs = fold_schedule(self.r["epochs"], self.r["warmup_epochs"], (), k=s.folds, budget=s.fold_budget)

        def make_ctx(train, meta, fold):
            return self.ctx(self.model(100 + fold), train, meta, epochs=fs.epochs, warmup=fs.warmup_epochs,
                            seed_offset=1000 * (fold + 1), test=False)

        cf = crossfit(make_ctx, cls, cfg, self.train, self.meta, k=s.folds, seed=self.seed)
        return {"train": cf.train_probs, "meta": cf.meta_probs, "seconds": time.time() - t0}

    def refit(self, cls, cfg, soft: np.ndarray) -> dict:
        """The method from scratch (warm-up included) with cross-entropy on `soft` (N_train, K) labels."""
        from engine.train.context import TensorData
        from engine.train.loop import fit, restore_best

        t0 = time.time()
        train = TensorData(self.train.images, self.train.targets, soft)
        ctx = self.ctx(self.model(0), train, self.meta, epochs=self.r["epochs"], warmup=self.r["warmup_epochs"])
        method = cls(cfg, ctx)
        state = fit(ctx, method)
        return {"ctx": ctx, "model": restore_best(ctx, method, state), "seconds": time.time() - t0}

    def meta_only(self) -> dict:
        """A fresh network trained on the meta set alone, as many SGD steps as the full run (last epoch kept)."""
        from engine.train.steps import ce_epoch

        t0 = time.time()
        steps_full = self.r["epochs"] * -(-len(self.data.train) // self.r["batch_size"])
        per_epoch = -(-len(self.data.meta) // self.r["batch_size"])
        epochs = max(1, steps_full // per_epoch)
        ctx = self.ctx(self.model(7), self.meta, self.meta, epochs=epochs, warmup=epochs)
        for e in range(epochs):
            ctx.set_lr(e)
            ce_epoch(ctx, e, stage="meta-only")
        return {"ctx": ctx, "model": ctx.model.eval(), "seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------------------------
# scoring


def score(suggested: np.ndarray, flags: np.ndarray, maj: np.ndarray, truth: np.ndarray) -> dict:
    """Label recovery and flag precision/recall/F1 against 'the majority label is wrong' (training rows)."""
    wrong = maj != truth
    tp = int((flags & wrong).sum())
    p = tp / int(flags.sum()) if flags.any() else 0.0
    r = tp / int(wrong.sum()) if wrong.any() else 1.0
    return {"recovery": float((suggested == truth).mean()), "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0, "n_flagged": int(flags.sum()), "n_wrong": int(wrong.sum())}


def model_row(probs: np.ndarray, maj: np.ndarray, truth: np.ndarray) -> dict:
    """A classifier's own view: suggestion = its class, flag = it disagrees with the majority."""
    sug = probs.argmax(1)
    return score(sug, sug != maj, maj, truth)


def product_flags(posterior: np.ndarray, votes: np.ndarray, maj: np.ndarray, known: np.ndarray, k: int,
                  ordinal: bool) -> pd.DataFrame:
    """The product's flags (`engine.flags.flag_images`, as `engine run` calls it) for these rows."""
    from engine.estimate import review_priority
    from engine.flags import flag_images

    counts = np.stack([(votes == c).sum(1) for c in range(k)], 1)
    graded = (votes >= 0).sum(1)
    tie = (counts == counts.max(1, keepdims=True)).sum(1) > 1
    consensus = (counts.max(1) == graded) & (graded >= 2)
    return flag_images(posterior, maj, consensus=consensus, tie=tie, classes=[str(c) for c in range(k)],
                       priority=review_priority(posterior, maj, ordinal=ordinal), known=known >= 0)


def pipeline_row(tr: Trainer, prior_train: np.ndarray, prior_meta: np.ndarray) -> tuple[dict, np.ndarray]:
    """The product's label estimate (engine.estimate + engine.flags, as `engine run` calls them) on training rows."""
    from engine.estimate import label_estimate

    d = tr.data
    rows = np.concatenate([d.train, d.meta])
    n_train = len(d.train)
    maj = d.majority
    known = np.r_[np.full(n_train, -1), d.truth[d.meta]]
    prior = np.concatenate([prior_train, prior_meta])
    est = label_estimate(prior, d.votes[rows], known=known, calibrate=True, calibration_rows=known >= 0,
                         experts=tr.setup.experts)
    fl = product_flags(est.posterior, d.votes[rows], maj[rows], known, d.k, d.ordinal)
    out = score(est.posterior[:n_train].argmax(1), fl["flag"].to_numpy()[:n_train].astype(bool), maj[d.train],
                d.truth[d.train])
    out["expected_wrong"] = float(fl["flag_score"].to_numpy()[:n_train].sum())
    out["temperature"] = est.temperature
    return out, est.posterior[:n_train]


def run_cell(dataset_scenario: str, seed: int, setup: Setup, rows: tuple[str, ...] | None = None) -> list[dict]:
    """Every row of one cell."""
    import torch

    from engine.methods import list_methods

    torch.set_num_threads(1)
    data = make_data(dataset_scenario, seed, setup)
    tr = Trainer(data, setup, seed)
    maj, truth = data.majority[data.train], data.truth[data.train]

    def want(row: str) -> bool:
        return rows is None or row in rows or row.split(":")[0] in rows

    out: list[dict] = []

    def add(row: str, metrics: dict, test_acc: float | None, seconds: float) -> None:
        out.append({"cell": dataset_scenario, "seed": seed, "row": row, "test_acc": test_acc, "seconds": seconds,
                    **metrics})

    add("majority", score(maj, np.zeros(len(maj), bool), maj, truth), None, 0.0)
    warm = tr.warmup()
    runs = {}
    for name in list_methods():
        if want(f"method:{name}") or (name == "ce" and want("ce")) or (name == "meta-finetune" and want(
                "ce+finetune")) or want(f"pipeline:{name}"):
            runs[name] = tr.run_method(name, warm)
            r = runs[name]
            acc = r["ctx"].accuracy(r["ctx"].test, r["model"])
            soft = r["state"].best_soft_labels.numpy()
            add(f"method:{name}", model_row(soft, maj, truth), acc, r["seconds"])
    if "ce" in runs and want("ce"):
        r = runs["ce"]
        add("ce", model_row(r["ctx"].predict_train(r["model"]).numpy(), maj, truth),
            r["ctx"].accuracy(r["ctx"].test, r["model"]), r["seconds"])
    if "meta-finetune" in runs and want("ce+finetune"):
        r = runs["meta-finetune"]
        add("ce+finetune", model_row(r["ctx"].predict_train(r["model"]).numpy(), maj, truth),
            r["ctx"].accuracy(r["ctx"].test, r["model"]), r["seconds"])
    if want("meta-only"):
        mo = tr.meta_only()
        add("meta-only", model_row(mo["ctx"].predict(tr.train, mo["model"]).numpy(), maj, truth),
            mo["ctx"].accuracy(tr.test, mo["model"]), mo["seconds"])
    folds = {}
    for name in runs:
        if want(f"pipeline:{name}") or (name == "ce" and any(want(p) for p in ("cleanlab", "crowdlab"))):
            folds[name] = tr.crossfit(runs[name]["cls"], runs[name]["cfg"])
        if want(f"pipeline:{name}"):
            f, r = folds[name], runs[name]
            metrics, posterior = pipeline_row(tr, f["train"], f["meta"])
            if setup.dump:  # what the estimator saw, for offline study of the estimator
                Path(setup.dump).mkdir(parents=True, exist_ok=True)
                np.savez_compressed(Path(setup.dump) / f"{dataset_scenario}_s{seed}_{name}.npz", prior_train=f["train"],
                                    prior_meta=f["meta"], votes=data.votes, truth=data.truth, train=data.train,
                                    meta=data.meta, insample=r["ctx"].predict_train(r["model"]).numpy(), k=data.k)
            add(f"pipeline:{name}", metrics, r["ctx"].accuracy(r["ctx"].test, r["model"]), r["seconds"] + f["seconds"])
            if want(f"refit:{name}"):  # the method trained again, on the estimated labels instead of the votes
                rf = tr.refit(r["cls"], r["cfg"], posterior)
                add(f"refit:{name}", metrics, rf["ctx"].accuracy(rf["ctx"].test, rf["model"]),
                    r["seconds"] + f["seconds"] + rf["seconds"])
    if "ce" in folds:
        oos, secs = folds["ce"]["train"], runs["ce"]["seconds"] + folds["ce"]["seconds"]
        acc = runs["ce"]["ctx"].accuracy(runs["ce"]["ctx"].test, runs["ce"]["model"])
        if want("cleanlab"):
            from cleanlab.filter import find_label_issues

            issues = find_label_issues(maj, oos, n_jobs=1)  # the bench's own workers are processes already
            add("cleanlab", score(np.where(issues, oos.argmax(1), maj), issues, maj, truth), acc, secs)
        if data.votes.shape[1] > 1 and want("crowdlab"):
            import pandas as pd
            from cleanlab.multiannotator import get_label_quality_multiannotator

            v = data.votes[data.train]
            res = get_label_quality_multiannotator(pd.DataFrame(np.where(v >= 0, v, np.nan)), oos, verbose=False)
            lab = res["label_quality"]["consensus_label"].to_numpy().astype(int)
            add("crowdlab", score(lab, lab != maj, maj, truth), acc, secs)
    if data.votes.shape[1] > 1 and want("dawid-skene"):
        import pandas as pd
        from crowdkit.aggregation import DawidSkene

        v = data.votes[data.train]
        n_idx, e_idx = np.nonzero(v >= 0)
        df = pd.DataFrame({"task": n_idx, "worker": e_idx, "label": v[n_idx, e_idx]})
        lab = DawidSkene(n_iter=100).fit_predict(df).sort_index().to_numpy().astype(int)
        add("dawid-skene", score(lab, lab != maj, maj, truth), None, 0.0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# driver and tables


def _job(args):
    cell, seed, setup, rows = args
    t0 = time.time()
    res = run_cell(cell, seed, setup, rows)
    print(f"  {cell} seed {seed}: {time.time() - t0:.0f}s", flush=True)
    return res


def _saved(cells, path: Path):
    """Pass each finished cell through, appending it to `path` first (a crash keeps what was done)."""
    for res in cells:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(res, default=float) + "\n")
        yield res


def summarise(results: list[dict]) -> dict:
    """{cell: {row: {metric: (mean, std)}}} over seeds."""
    out: dict = {}
    keys = ("test_acc", "recovery", "precision", "recall", "f1", "n_flagged", "n_wrong", "seconds")
    for r in results:
        out.setdefault(r["cell"], {}).setdefault(r["row"], []).append(r)
    for rows in out.values():
        for row, recs in rows.items():
            rows[row] = {k: _ms([x[k] for x in recs if x.get(k) is not None]) for k in keys} | {"seeds": len(recs)}
    return out


def _ms(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


PEERS = ("ce", "ce+finetune", "meta-only", "cleanlab", "crowdlab", "dawid-skene")


def default_row() -> str:
    """The row of the product's default pipeline: the label estimate on top of the default method."""
    from engine.config import RuntimeConfig

    return f"pipeline:{RuntimeConfig().method}"


def verdict(summary: dict) -> list[dict]:
    """Per cell, the issue's checks on seed means: the default pipeline against the best peer (label recovery,
    flag F1, test accuracy within 0.5 point), flagged vs truly wrong, and every method's soft labels vs the
    majority vote."""
    out = []
    row = default_row()
    for cell, rows in summary.items():
        if row not in rows:
            continue
        me = rows[row]
        peers = {p: rows[p] for p in PEERS if p in rows}

        def best(key, peers=peers):
            vals = [(v[key][0], p) for p, v in peers.items() if v.get(key)]
            return max(vals) if vals else (float("nan"), "-")

        rec, rec_peer = best("recovery")
        f1, f1_peer = best("f1")
        acc, acc_peer = best("test_acc")
        flagged, wrong = me["n_flagged"][0], me["n_wrong"][0]
        floor = rows["majority"]["recovery"][0] if "majority" in rows else float("nan")
        below = sorted(r for r, v in rows.items() if r.startswith(("method:", "pipeline:")) and v["recovery"][0] < floor)
        out.append({"cell": cell, "recovery": me["recovery"][0], "best_peer_recovery": rec, "recovery_peer": rec_peer,
                    "f1": me["f1"][0], "best_peer_f1": f1, "f1_peer": f1_peer,
                    "test_acc": me["test_acc"][0] if me.get("test_acc") else float("nan"),
                    "best_peer_test_acc": acc, "test_acc_peer": acc_peer, "flagged_over_wrong": flagged / max(wrong, 1),
                    "precision": me["precision"][0], "recall": me["recall"][0], "below_majority": below})
    return out


def verdict_markdown(rows: list[dict]) -> str:
    lines = [f"Default pipeline `{default_row()}` against the best peer ({', '.join(PEERS)}), seed means:", "",
             "| cell | label recovery (best peer) | flag F1 (best peer) | test acc (best peer) | flag P / R | "
             "flagged / truly wrong | soft labels below the majority vote |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {100 * r['recovery']:.1f} ({100 * r['best_peer_recovery']:.1f} {r['recovery_peer']}) | "
            f"{100 * r['f1']:.1f} ({100 * r['best_peer_f1']:.1f} {r['f1_peer']}) | {100 * r['test_acc']:.1f} "
            f"({100 * r['best_peer_test_acc']:.1f} {r['test_acc_peer']}) | {100 * r['precision']:.1f} / "
            f"{100 * r['recall']:.1f} | {r['flagged_over_wrong']:.2f} | {', '.join(r['below_majority']) or 'none'} |")
    return "\n".join(lines) + "\n"


def markdown(summary: dict, meta: dict) -> str:
    def f(v, pct=True):
        if v is None:
            return "–"
        m, s = v
        return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.0f} ± {s:.0f}"

    lines = [f"Run {meta['date']} on {meta['env']['cpu']} ({meta['env']['cores']} cores), torch {meta['env']['torch']}, "
             f"timm {meta['env']['timm']}; {meta['setup']}; seeds {meta['seeds']}; wall {meta['wall_s'] / 60:.1f} min.",
             ""]
    for cell, rows in summary.items():
        lines += [f"**{cell}**", "", "| row | test acc | label recovery | flag precision | flag recall | flag F1 | "
                  "flagged | truly wrong | seconds |", "|---|---|---|---|---|---|---|---|---|"]
        order = sorted(rows, key=lambda r: (not r.startswith("pipeline"), r.startswith("method"), r))
        for row in order:
            v = rows[row]
            lines.append(f"| {row} | {f(v['test_acc'])} | {f(v['recovery'])} | {f(v['precision'])} | "
                         f"{f(v['recall'])} | {f(v['f1'])} | {f(v['n_flagged'], False)} | {f(v['n_wrong'], False)} | "
                         f"{f(v['seconds'], False)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from bench.common import environment
    from bench.fundus import SCENARIOS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", nargs="*", default=[s.name for s in SCENARIOS] + list(DIGITS_SCENARIOS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--rows", nargs="*", default=None, help="only these rows (e.g. pipeline ce cleanlab method:mslg)")
    p.add_argument("--n", type=int, default=Setup.n)
    p.add_argument("--size", type=int, default=Setup.size)
    p.add_argument("--arch", default=Setup.arch)
    p.add_argument("--epochs", type=int, default=0, help="0 = the recipe's")
    p.add_argument("--folds", type=int, default=Setup.folds)
    p.add_argument("--targets", default=Setup.targets, choices=("votes", "majority"))
    p.add_argument("--recipe", default=Setup.recipe, choices=("scratch", "finetune"))
    p.add_argument("--fold-budget", type=float, default=Setup.fold_budget)
    p.add_argument("--dump", default="", help="save each cell's estimator inputs here (.npz)")
    p.add_argument("--experts", default=Setup.experts, choices=("correlated", "independent", "none"))
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--quick", action="store_true", help="one small panel cell (600 images at 32 px, 2 epochs): a "
                   "smoke test of every row, run in CI")
    p.add_argument("--json", default=None, help="write raw results here (default bench/out/label_bench_<date>.json)")
    p.add_argument("--results", default=None, help="write the Markdown tables to this file")
    a = p.parse_args(argv)
    if a.quick:
        a.scenarios, a.seeds, a.n, a.size, a.epochs = ["panel-30"], [0], 600, 32, 2
    setup = Setup(n=a.n, size=a.size, arch=a.arch, epochs=a.epochs, folds=a.folds, targets=a.targets, recipe=a.recipe,
                  fold_budget=a.fold_budget, dump=a.dump, experts=a.experts)
    rows = tuple(a.rows) if a.rows else None
    jobs = [(c, s, setup, rows) for s in a.seeds for c in a.scenarios]
    t0 = time.time()
    OUT.mkdir(parents=True, exist_ok=True)
    partial = OUT / f"label_bench_{dt.datetime.now():%Y%m%d_%H%M}.partial.jsonl"  # cells as they finish
    if a.workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(a.workers, maxtasksperchild=1) as pool:
            results = [r for res in _saved(pool.imap_unordered(_job, jobs), partial) for r in res]
    else:
        results = [r for res in _saved(map(_job, jobs), partial) for r in res]
    meta = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "env": environment(), "setup": str(setup),
            "seeds": a.seeds, "wall_s": time.time() - t0, "quick": a.quick}
    summary = summarise(results)
    text = verdict_markdown(verdict(summary)) + "\n" + markdown(summary, meta)
    print(text)
    path = Path(a.json) if a.json else OUT / f"label_bench_{dt.datetime.now():%Y%m%d_%H%M}.json"
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    if a.results:
        Path(a.results).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
