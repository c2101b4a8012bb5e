"""Active review ordering: which image a clinician should look at next, refreshed cheaply after each batch of decisions.

The expected value of reviewing image i (higher = review first; 0 for images with a known label) is the expected
severity of the error in the label the tool currently gives it, under the label estimate P(y_i = k) (the posterior
of engine/estimate.py), whose suggestion is ŷ_i = argmax_k P(y_i = k):

    value_i = E[d(y_i, ŷ_i)] = Σ_k P(y_i = k) · d(k, ŷ_i)

with d(k, j) = |k − j| / (K − 1) on an ordinal class scale (a normal↔plus error costs twice an adjacent one) and
d(k, j) = [k ≠ j] on a nominal one (then value = 1 − confidence). It is the probability that the current label is
wrong, weighted by what fixing it is worth: the severity of the error, and its effect on the model — the images the
estimate is unsure of are the ones where the network's view and the experts' votes pull apart (class borders,
ties), so a verified label there teaches the retrained network and re-anchors the experts' confusion matrices
most (uncertainty sampling). A weight on the training target (P(majority wrong), as in `flag_score`) was measured
and left out: ½ label + ½ target raised label recovery after 10 % reviewed 1.6× as much as random reviews did,
this rule about twice as much (measured while developing it, on an earlier version of bench/review_sim.py that
trained `ce`; this rule's current numbers: bench/RESULTS.md, "Issue 13"). Ordering by `flag_score` instead finds the
wrong majority labels first, which the export keeps until someone reviews them: choose it when the export matters
more than the labels and the model.

Orderings (`ORDERINGS`): `value` (the rule above), `flag_score` (P(majority wrong)), `random` (seeded; for audits:
the realised precision of a random part of the queue estimates the whole queue's, see engine/flag_precision.py).

Refresh without retraining: a run saves the calibrated model probabilities its label estimate started from
(`prior.csv`); `refresh` re-runs only the estimator (Dawid–Skene EM, milliseconds) with the reviewer's decisions as
known labels, which updates the posterior of every image (through the experts' confusion matrices) and so the order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine import atomic
from engine.data import schema as S
from engine.rundir import RunDir

ORDERINGS = ("value", "flag_score", "random")
ORDERING_TEXT = {"value": "expected value of a review", "flag_score": "flag score (P(majority wrong))",
                 "random": "random (for audits)"}


# ---------------------------------------------------------------------------------------------------------------
# the value of a review (pure functions)


def distance_matrix(k: int, *, ordinal: bool) -> np.ndarray:
    """(K, K) cost of calling class j when the truth is k: |k − j| / (K − 1) on an ordinal scale, else [k ≠ j]."""
    idx = np.arange(k)
    if ordinal and k >= 3:
        return np.abs(idx[:, None] - idx[None, :]) / (k - 1)
    return (idx[:, None] != idx[None, :]).astype(float)


def expected_cost(posterior: np.ndarray, label: np.ndarray, *, ordinal: bool) -> np.ndarray:
    """E[d(y, label)] under the posterior (N, K) for labels (N,) (-1 = none -> 0)."""
    post = np.asarray(posterior, float)
    label = np.asarray(label, int)
    d = distance_matrix(post.shape[1], ordinal=ordinal)
    cost = (post * d[:, np.clip(label, 0, None)].T).sum(1)
    return np.where(label >= 0, cost, 0.0)


def review_value(posterior: np.ndarray, majority: np.ndarray, *, ordinal: bool,
                 known: np.ndarray | None = None) -> np.ndarray:
    """Expected value of a review (N,) = E[d(y, suggested)] (module docstring), higher = review first; 0 where the
    label is known or the image has no majority (nobody graded it: not in the review queue)."""
    post = np.asarray(posterior, float)
    majority = np.asarray(majority, int)
    suggested = post.argmax(1) if len(post) else np.zeros(0, int)
    value = expected_cost(post, suggested, ordinal=ordinal)
    reviewable = majority >= 0
    if known is not None:
        reviewable &= ~np.asarray(known, bool)
    return np.where(reviewable, value, 0.0)


def order(scores: dict[str, np.ndarray], by: str, *, seed: int = 0) -> np.ndarray:
    """Positions 0..N-1 in review order. `scores` holds "value" and "flag_score" arrays (N,); `by` is one of ORDERINGS.
    Ties keep the given order (stable), so the order is deterministic; `random` is a seeded permutation."""
    if by not in ORDERINGS:
        raise ValueError(f"unknown ordering '{by}'; choose from {', '.join(ORDERINGS)}")
    n = len(next(iter(scores.values())))
    if by == "random":
        return np.random.default_rng([seed, 2718]).permutation(n)
    return np.argsort(-np.asarray(scores[by], float), kind="stable")


# ---------------------------------------------------------------------------------------------------------------
# the prior a run saves, and the quick refresh


def write_prior(path: Path | str, images, classes: list[str], prior: np.ndarray) -> None:
    """prior.csv: image, prior:<class> — the calibrated model probabilities the label estimate started from."""
    frame = pd.DataFrame({S.IMAGE: list(images)})
    for j, c in enumerate(classes):
        frame[S.prior_col(c)] = np.asarray(prior)[:, j].round(8)
    atomic.write_csv(path, frame)


@dataclass
class Refreshed:
    """The label estimate after decisions, aligned with labels.csv rows (N images, K classes)."""

    images: list[str]
    posterior: np.ndarray  # (N, K)
    known: np.ndarray  # (N,) bool: meta, verified or decided
    flag_score: np.ndarray  # (N,) P(majority wrong), 0 where known
    value: np.ndarray  # (N,) expected value of a review, 0 where known


def votes_matrix(votes: pd.Series, classes: list[str]) -> np.ndarray:
    """labels.csv `votes` strings ("expert=class;...") -> (N, E) class indices, -1 = not graded (experts in order of
    first appearance; the estimate does not depend on their order)."""
    from engine.data.aggregate import parse_votes

    parsed = [parse_votes(v) for v in votes]
    experts = list(dict.fromkeys(e for p in parsed for e in p))
    index = {c: k for k, c in enumerate(classes)}
    out = np.full((len(parsed), max(len(experts), 1)), -1, dtype=int)
    col = {e: j for j, e in enumerate(experts)}
    for i, p in enumerate(parsed):
        for e, c in p.items():
            out[i, col[e]] = index.get(c, -1)
    return out


def refresh(run_dir: Path | str, decisions: dict[str, str] | None = None) -> Refreshed | None:
    """Re-run the label estimate of a run with `decisions` ({image: class}) as known labels, besides the meta set and
    the run's verified images; None when the run has no prior.csv (written before this feature)."""
    from engine.estimate import flag_scores, label_estimate
    from engine.export import read_labels

    run_dir = Path(run_dir)
    prior_path = run_dir / "prior.csv"
    if not prior_path.is_file():
        return None
    labels, classes = read_labels(run_dir / "labels.csv")
    prior = pd.read_csv(prior_path, dtype={S.IMAGE: str}, keep_default_na=False).set_index(S.IMAGE)
    images = list(labels[S.IMAGE])
    q = prior.reindex(images)[[S.prior_col(c) for c in classes]].to_numpy(float)
    metrics = RunDir(run_dir).read_metrics()
    index = {c: k for k, c in enumerate(classes)}
    majority = np.array([index.get(m, -1) for m in labels[S.MAJORITY]])
    post_run = labels[S.prob_cols(classes)].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy()
    known = np.full(len(images), -1)
    meta = (labels[S.ROLE] == S.META).to_numpy()
    known[meta] = majority[meta]
    verified = labels[S.VERIFIED].map(S.parse_bool).eq(True).to_numpy()
    known[verified] = post_run[verified].argmax(1)
    for i, img in enumerate(images):
        if decisions and img in decisions and decisions[img] in index:
            known[i] = index[decisions[img]]
    estimator = metrics.get("estimator") or {}
    experts = (estimator.get("experts") or {}).get("mode", "correlated")
    missing = np.isnan(q).any(1)
    # prior.csv is already calibrated (T = 1 here); the run's own expert model and confusion fit, so the refresh
    # agrees with the run's estimate
    est = label_estimate(np.where(missing[:, None], 1.0 / len(classes), q), votes_matrix(labels[S.VOTES], classes),
                         known=known, calibrate=False, calibration_rows=np.zeros(len(images), bool), experts=experts,
                         confusions=estimator.get("confusion_fit", "em"), has_probs=~missing)
    has = known >= 0
    ordinal = bool(metrics.get("ordinal", False))
    return Refreshed(images, est.posterior, has, np.where(has, 0.0, flag_scores(est.posterior, majority)),
                     review_value(est.posterior, majority, ordinal=ordinal, known=has))
