"""Aggregate expert votes: majority vote with a documented tie rule, consensus, agreement, Cohen's and Fleiss' kappa.

Votes are class indices in an (N, E) int array, -1 = not graded (see `VoteTable.votes_matrix`). The maths is pure
functions on arrays; the `*(table)` functions are thin wrappers that name rows and columns.

Tie rule: when several classes share the top count, the majority is the **more severe** class, i.e. the later one
in class order (for ROP: plus > pre-plus > normal, the clinically cautious choice); `tie_` records that it happened.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine.data import schema as S

if TYPE_CHECKING:
    from engine.data.votes import VoteTable

TIE_BREAKS = ("severe", "mild")  # severe: later class in class order wins a tie (documented default)


def vote_counts(votes: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, E) int votes (-1 = not graded) -> (N, K) int counts of votes per class."""
    votes = _check_votes(votes, n_classes)
    counts = np.zeros((votes.shape[0], n_classes), dtype=np.int64)
    rows, cols = np.nonzero(votes >= 0)
    np.add.at(counts, (rows, votes[rows, cols]), 1)
    return counts


def majority_from_counts(counts: np.ndarray, *, tie_break: str = "severe") -> tuple[np.ndarray, np.ndarray]:
    """(N, K) counts -> labels (N,) int (-1 where nobody voted) and tie (N,) bool (top count shared)."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    counts = np.asarray(counts)
    top = counts.max(axis=1) if counts.shape[1] else np.zeros(len(counts), dtype=np.int64)
    if tie_break == "severe":  # last index holding the top count
        labels = counts.shape[1] - 1 - np.argmax(counts[:, ::-1], axis=1)
    else:  # first index holding the top count
        labels = np.argmax(counts, axis=1)
    voted = top > 0
    labels = np.where(voted, labels, -1)
    tie = voted & ((counts == top[:, None]).sum(axis=1) > 1)
    return labels.astype(np.int64), tie


class MajorityVote:
    """Majority vote over experts, crowd-kit style: options in the constructor, `fit` returns self, results in `*_`.

    Attributes after fit (N images, K classes): `counts_` (N, K), `labels_` (N,) (-1 = no grader), `tie_` (N,),
    `consensus_` (N,) (>= min_consensus graders, all agree), `n_graders_` (N,), `agreement_` (N,) (share of graders
    voting for the majority; NaN without grader), `probas_` (N, K) (vote shares; uniform without grader).
    """

    def __init__(self, *, tie_break: str = "severe", min_consensus: int = 2):
        self.tie_break = tie_break  # "severe": a tie goes to the later (more severe) class
        self.min_consensus = min_consensus  # graders needed before unanimity counts as consensus

    def fit(self, votes: np.ndarray, n_classes: int) -> MajorityVote:
        """votes (N, E) int, -1 = not graded; n_classes K. Returns self."""
        counts = vote_counts(votes, n_classes)
        n = counts.sum(axis=1)
        labels, tie = majority_from_counts(counts, tie_break=self.tie_break)
        top = counts.max(axis=1) if n_classes else np.zeros(len(counts), dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            agreement = np.where(n > 0, top / np.maximum(n, 1), np.nan)
            probas = np.where(n[:, None] > 0, counts / np.maximum(n, 1)[:, None], 1.0 / max(n_classes, 1))
        self.counts_ = counts
        self.labels_ = labels
        self.tie_ = tie
        self.n_graders_ = n
        self.consensus_ = (n >= self.min_consensus) & (top == n)
        self.agreement_ = agreement
        self.probas_ = probas
        return self


def format_votes(experts: list[str], grades: list[str]) -> str:
    """'expert=class;expert=class' over graded experts (grade != ''), in expert column order."""
    return ";".join(f"{e}={g}" for e, g in zip(experts, grades, strict=True) if g)


def parse_votes(cell: str) -> dict[str, str]:
    """The inverse of `format_votes`: the `votes` cell of labels.csv / aggregate -> {expert: class}, in order.
    (Expert names cannot hold '=' or ';' and class names no ';': read_votes refuses them.)"""
    out: dict[str, str] = {}
    for part in str(cell or "").split(";"):
        if "=" in part:
            expert, cls = part.split("=", 1)
            out[expert.strip()] = cls.strip()
    return out


def aggregate(table: VoteTable, *, tie_break: str = "severe") -> pd.DataFrame:
    """Per image: DataFrame[image, votes, majority, tie, consensus, n_graders, agreement], aligned with table.frame.

    `majority` is a class name ("" when nobody graded the image); `agreement` is NaN then.
    """
    votes = table.votes_matrix()
    mv = MajorityVote(tie_break=tie_break).fit(votes, table.n_classes)
    names = np.array([*table.classes, ""], dtype=object)  # index -1 -> ""
    grades = table.frame[table.experts].to_numpy(dtype=object)
    return pd.DataFrame(
        {
            S.IMAGE: table.frame[S.IMAGE].to_numpy(),
            S.VOTES: [format_votes(table.experts, list(g)) for g in grades],
            S.MAJORITY: names[mv.labels_],
            S.TIE: mv.tie_,
            S.CONSENSUS: mv.consensus_,
            S.N_GRADERS: mv.n_graders_,
            S.AGREEMENT: mv.agreement_,
        },
        index=table.frame.index,
    )


# ---------------------------------------------------------------------------------------------------------------
# inter-rater statistics (pure)


def pairwise_kappa(votes: np.ndarray, n_classes: int, *, weights: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cohen's kappa for every pair of experts on images both graded: ((E, E) float, (E, E) int common counts).

    NaN where two experts share no image or kappa is undefined (e.g. both always gave the same class).
    The diagonal is 1 for experts who graded anything. `weights`: None, "linear" or "quadratic" (sklearn).
    """
    from sklearn.metrics import cohen_kappa_score

    votes = _check_votes(votes, n_classes)
    e = votes.shape[1]
    graded = votes >= 0
    kappa = np.full((e, e), np.nan)
    common = graded.T.astype(np.int64) @ graded.astype(np.int64)
    labels = list(range(n_classes))
    for a in range(e):
        if graded[:, a].any():
            kappa[a, a] = 1.0
        for b in range(a + 1, e):
            both = graded[:, a] & graded[:, b]
            if not both.any():
                continue
            with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
                warnings.simplefilter("ignore")
                k = cohen_kappa_score(votes[both, a], votes[both, b], labels=labels, weights=weights)
            kappa[a, b] = kappa[b, a] = float(k)
    return kappa, common


def fleiss_kappa_votes(votes: np.ndarray, n_classes: int) -> tuple[float, int]:
    """Fleiss' kappa (statsmodels) on images graded by all E experts -> (kappa, number of such images).

    NaN with fewer than 2 experts, no fully graded image, or when undefined (every vote the same class).
    """
    from statsmodels.stats.inter_rater import fleiss_kappa as _fleiss

    votes = _check_votes(votes, n_classes)
    if votes.shape[1] < 2:
        return float("nan"), 0
    full = (votes >= 0).all(axis=1)
    n_full = int(full.sum())
    if n_full == 0:
        return float("nan"), 0
    counts = vote_counts(votes[full], n_classes)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        k = float(_fleiss(counts, method="fleiss"))
    return (k if np.isfinite(k) else float("nan")), n_full


def expert_agreement_arrays(votes: np.ndarray, n_classes: int, *, tie_break: str = "severe") -> dict[str, np.ndarray]:
    """Per expert (E,) arrays: n_graded, agree_majority, n_consensus_others, agree_consensus.

    agree_majority: share of the expert's grades equal to the majority (own vote included), over images that at
    least one other expert graded. agree_consensus: share equal to the *other* experts' consensus (>= 2 others,
    all agreeing: leave-one-out, so an expert cannot agree with himself), over images where such consensus exists.
    """
    votes = _check_votes(votes, n_classes)
    e = votes.shape[1]
    graded = votes >= 0
    mv = MajorityVote(tie_break=tie_break).fit(votes, n_classes)
    n_graded = graded.sum(axis=0)
    agree_maj = np.full(e, np.nan)
    agree_cons = np.full(e, np.nan)
    n_cons = np.zeros(e, dtype=np.int64)
    for j in range(e):
        shared = graded[:, j] & (mv.n_graders_ >= 2)
        if shared.any():
            agree_maj[j] = float((votes[shared, j] == mv.labels_[shared]).mean())
        others = np.delete(votes, j, axis=1)
        loo = MajorityVote(tie_break=tie_break).fit(others, n_classes)
        mask = graded[:, j] & loo.consensus_
        n_cons[j] = int(mask.sum())
        if mask.any():
            agree_cons[j] = float((votes[mask, j] == loo.labels_[mask]).mean())
    return {
        "n_graded": n_graded,
        "agree_majority": agree_maj,
        "n_consensus_others": n_cons,
        "agree_consensus": agree_cons,
    }


def confusion_vs_majority(votes: np.ndarray, n_classes: int, *, tie_break: str = "severe") -> np.ndarray:
    """(E, K, K) int: [e, i, j] = images whose majority is class i that expert e graded as class j."""
    votes = _check_votes(votes, n_classes)
    labels = MajorityVote(tie_break=tie_break).fit(votes, n_classes).labels_
    out = np.zeros((votes.shape[1], n_classes, n_classes), dtype=np.int64)
    for j in range(votes.shape[1]):
        m = votes[:, j] >= 0
        np.add.at(out[j], (labels[m], votes[m, j]), 1)
    return out


# ---------------------------------------------------------------------------------------------------------------
# table wrappers


def kappa_table(table: VoteTable, *, weights: str | None = None) -> pd.DataFrame:
    """Pairwise Cohen's kappa as an (E, E) DataFrame indexed by expert on both axes (NaN = undefined)."""
    kappa, _ = pairwise_kappa(table.votes_matrix(), table.n_classes, weights=weights)
    return pd.DataFrame(kappa, index=list(table.experts), columns=list(table.experts))


def fleiss_kappa(table: VoteTable) -> float:
    """Fleiss' kappa over the images every expert graded (NaN when there are none or it is undefined)."""
    return fleiss_kappa_votes(table.votes_matrix(), table.n_classes)[0]


def expert_agreement(table: VoteTable) -> pd.DataFrame:
    """One row per expert: expert, n_graded, agree_majority, n_consensus_others, agree_consensus, kappa_mean."""
    votes = table.votes_matrix()
    stats = expert_agreement_arrays(votes, table.n_classes)
    kappa, _ = pairwise_kappa(votes, table.n_classes)
    off = kappa.copy()
    np.fill_diagonal(off, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN row -> NaN
        kappa_mean = np.nanmean(off, axis=1) if len(off) else np.zeros(0)
    return pd.DataFrame({"expert": list(table.experts), **stats, "kappa_mean": kappa_mean})


def _check_votes(votes: np.ndarray, n_classes: int) -> np.ndarray:
    votes = np.asarray(votes)
    if votes.ndim != 2:
        raise ValueError(f"votes must be 2-D (N, E), got shape {votes.shape}")
    if votes.size and (votes.min() < -1 or votes.max() >= n_classes):
        raise ValueError(f"votes must be in [-1, {n_classes - 1}], got [{votes.min()}, {votes.max()}]")
    return votes.astype(np.int64, copy=False)
