"""Offline study of the label estimate on the label benchmark's saved estimator inputs (no training).

    .venv/bin/python -m bench.label_bench --dump bench/out/dump ...     # saves each cell's inputs (.npz)
    .venv/bin/python -m bench.estimator_study bench/out/dump            # this table, in seconds

For each saved cell (the cross-fitted out-of-sample probabilities, the votes, the clean meta labels and the hidden
truth) it scores, on the training rows as `bench.label_bench` does:
  - `majority`: the vote itself;
  - `model`: the calibrated out-of-sample model alone (votes ignored);
  - `estimate`: the product's `engine.estimate.label_estimate` (the engine's defaults);
  - `estimate:independent`: the same with independent experts (classic Dawid–Skene with a model prior);
  - `estimate:moments`: the experts' confusions measured once against the calibrated model instead of by EM
    (`--confusions moments`);
  - `oracle-votes`: the same prior combined with the TRUE vote-pattern likelihood P(pattern | class), counted from
    the hidden truth. Its gap to `estimate` is what the estimated expert model costs; its gap to 100 % is what the
    evidence (prior + votes) cannot tell.
The `diag` column is the mean diagonal of the experts' confusion matrices (estimated vs true): an estimate far
above the truth means EM has explained the votes by a model that already predicts them (a prior learnt from noisy
labels), so the votes win every disagreement.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.label_bench import product_flags, score  # noqa: E402


def oracle_pattern_likelihood(votes: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """P(image i's vote pattern | y = c) (N, K) counted from the hidden truth (add-one smoothed)."""
    patterns, inverse = np.unique(votes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.ones((len(patterns), k))
    np.add.at(counts, (inverse, truth), 1.0)
    return (counts / counts.sum(0, keepdims=True))[inverse]


def study_cell(path: Path) -> list[dict]:
    """Rows of the study for one saved cell."""
    from engine.data.aggregate import MajorityVote
    from engine.estimate import apply_temperature, label_estimate

    d = np.load(path)
    k, train, meta, truth = int(d["k"]), d["train"], d["meta"], d["truth"]
    ordinal = not path.name.startswith("digits-")
    rows = np.concatenate([train, meta])
    n_train = len(train)
    votes = d["votes"][rows]
    maj = MajorityVote(tie_break="severe").fit(d["votes"], k).labels_[rows]
    known = np.r_[np.full(n_train, -1), truth[meta]]
    prior = np.concatenate([d["prior_train"], d["prior_meta"]])
    t = truth[rows]

    def row(name: str, posterior: np.ndarray, diag: float | None = None) -> dict:
        flags = product_flags(posterior, votes, maj, known, k, ordinal)["flag"].to_numpy().astype(bool)
        return {"cell": path.stem, "row": name, "diag": diag,
                **score(posterior[:n_train].argmax(1), flags[:n_train], maj[:n_train], t[:n_train])}

    true_diag = float(np.mean([np.mean(votes[(t == c) & (votes[:, e] >= 0), e] == c)
                               for e in range(votes.shape[1]) for c in range(k)]))
    out = [{"cell": path.stem, "row": "majority", "diag": true_diag,
            **score(maj[:n_train], np.zeros(n_train, bool), maj[:n_train], t[:n_train])}]
    est = label_estimate(prior, votes, known=known, calibrate=True, calibration_rows=known >= 0, experts="none")
    out.append(row("model", est.posterior))
    for experts, name in (("correlated", "estimate"), ("independent", "estimate:independent")):
        est = label_estimate(prior, votes, known=known, calibrate=True, calibration_rows=known >= 0, experts=experts)
        out.append(row(name, est.posterior, float(np.mean([np.diag(c).mean() for c in est.confusions]))))
    mo = label_estimate(prior, votes, known=known, calibrate=True, calibration_rows=known >= 0,
                        confusions="moments")
    out.append(row("estimate:moments", mo.posterior, float(np.mean([np.diag(c).mean() for c in mo.confusions]))))
    q = apply_temperature(prior, est.temperature)
    post = q * oracle_pattern_likelihood(votes, t, k)
    post /= post.sum(1, keepdims=True)
    post[known >= 0] = np.eye(k)[known[known >= 0]]
    out.append(row("oracle-votes", post, true_diag))
    return out


def table(results: list[dict]) -> str:
    lines = ["| cell | row | recovery % | flag P % | flag R % | F1 | flagged / wrong | diag |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        diag = "" if r["diag"] is None else f"{r['diag']:.2f}"
        lines.append(f"| {r['cell']} | {r['row']} | {100 * r['recovery']:.1f} | {100 * r['precision']:.1f} | "
                     f"{100 * r['recall']:.1f} | {r['f1']:.3f} | {r['n_flagged']} / {r['n_wrong']} | {diag} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dump", help="folder written by `bench.label_bench --dump`")
    p.add_argument("--method", default="meta-finetune", help="whose cross-fitted probabilities (file suffix)")
    a = p.parse_args(argv)
    paths = sorted(Path(a.dump).glob(f"*_{a.method}.npz"))
    if not paths:
        print(f"no *_{a.method}.npz in {a.dump}: run bench.label_bench with --dump {a.dump} first", file=sys.stderr)
        return 2
    print(table([r for path in paths for r in study_cell(path)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
