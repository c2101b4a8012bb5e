"""Review flags: which images a clinician should look at, why (a machine-readable code and words), in which order.

Input is the label estimate of every image (`engine.estimate`): the posterior P(true class | image, votes).
  - `flag_score` = P(the majority label is wrong) = 1 − P(y = majority); higher = more likely mislabelled.
  - The queue is as long as the expected number of wrong majority labels: the rows with the highest `flag_score`
    are flagged until their count reaches round(Σ flag_score) over the reviewable rows; every row whose majority is
    more likely wrong than right (flag_score > 0.5) is flagged as well. With a calibrated posterior this makes the
    number flagged an estimate of the number of errors, and precision ≈ recall.
  - `priority` orders the queue (higher first): the expected severity distance on an ordinal scale (see
    `engine.estimate.review_priority`).
Codes (`flag_code`, ';'-joined, the first is the primary reason; `FLAG_CODES` maps them to short labels for the app):
  other_class         another class is more likely than the majority's
  majority_doubtful   the majority class is still the likeliest single class, but the queue needs it reviewed
  tie                 the experts tied; the tie rule chose the more severe class
  consensus_disputed  the experts were unanimous, yet the evidence disputes their label
Rows without a majority (nobody graded) and rows with a known label (the meta set) are never flagged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FLAG_CODES = {
    "other_class": "another class is more likely",
    "majority_doubtful": "majority label doubtful",
    "tie": "experts tied",
    "consensus_disputed": "unanimous experts disputed",
}


def queue_length(scores: np.ndarray, reviewable: np.ndarray) -> int:
    """round(Σ flag_score) over reviewable rows: the expected number of wrong majority labels among them."""
    return int(round(float(np.asarray(scores, float)[reviewable].sum())))


def flag_images(posterior: np.ndarray, majority: np.ndarray, *, consensus: np.ndarray, tie: np.ndarray,
                classes: list[str], priority: np.ndarray | None = None, known: np.ndarray | None = None) -> pd.DataFrame:
    """posterior (N, K), majority (N,) class index (-1 = none), consensus/tie (N,) bool, known (N,) bool (meta rows)
    -> DataFrame[suggested, confidence, flag, flag_code, flag_reason, flag_score, priority] (N rows)."""
    post = np.asarray(posterior, dtype=float)
    majority = np.asarray(majority, dtype=int)
    n = len(post)
    known = np.zeros(n, bool) if known is None else np.asarray(known, bool)
    consensus, tie = np.asarray(consensus, bool), np.asarray(tie, bool)
    suggested = post.argmax(1) if n else np.zeros(0, int)
    confidence = post.max(1) if n else np.zeros(0)
    has_major = majority >= 0
    p_major = np.where(has_major, post[np.arange(n), np.clip(majority, 0, None)], 1.0)
    score = np.where(has_major, 1.0 - p_major, 0.0)
    reviewable = has_major & ~known
    score = np.where(reviewable, score, 0.0)
    priority = score if priority is None else np.where(reviewable, np.asarray(priority, float), 0.0)

    flags = np.zeros(n, dtype=int)
    order = np.lexsort((np.arange(n), -score))  # highest score first, file order on ties
    order = order[reviewable[order]]
    flags[order[:queue_length(score, reviewable)]] = 1
    flags[reviewable & (score > 0.5)] = 1

    codes, reasons = [], []
    for i in range(n):
        if not flags[i]:
            codes.append("")
            reasons.append("")
            continue
        s, m = classes[suggested[i]], classes[majority[i]]
        if suggested[i] != majority[i]:
            c = ["other_class"]
            words = [f"{s} is more likely (p={confidence[i]:.2f}) than the majority's {m} (p={p_major[i]:.2f})"]
        else:
            c = ["majority_doubtful"]
            words = [f"the majority's {m} is the likeliest class but only p={p_major[i]:.2f}"]
        if tie[i]:
            c.append("tie")
            words.append(f"experts tied; the tie rule chose {m}")
        if consensus[i]:
            c.append("consensus_disputed")
            words.append(f"all experts said {m}")
        codes.append(";".join(c))
        reasons.append("; ".join(words))
    return pd.DataFrame({
        "suggested": [classes[k] for k in suggested],
        "confidence": confidence,
        "flag": flags,
        "flag_code": codes,
        "flag_reason": reasons,
        "flag_score": score,
        "priority": priority,
    })
