"""Disagreement flags: which images a clinician should look at, why (in words), and in which order.

Rules (any one flags the image):
  1. the suggestion (argmax of the soft label / prediction) differs from the majority vote;
  2. experts split (not unanimous) and the soft label is uncertain (top probability < `uncertain`);
  3. the majority vote was a tie, resolved by the documented rule.
`flag_score` = 1 − p(majority class): the probability, under the soft label, that the majority label is wrong.
A method may supply its own ranking (O2U's normalised loss) which then replaces the score.
Images nobody graded have no majority to question and are never flagged (export gives them the model's label).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def flag_images(probs: np.ndarray, majority: np.ndarray, *, consensus: np.ndarray, tie: np.ndarray,
                classes: list[str], uncertain: float = 0.6, scores: np.ndarray | None = None) -> pd.DataFrame:
    """probs (N, K), majority (N,) class index (-1 = none), consensus/tie (N,) bool -> DataFrame.

    Columns: suggested (class name), confidence (top probability), flag (0/1), flag_reason (text), flag_score.
    """
    probs = np.asarray(probs, dtype=float)
    majority = np.asarray(majority, dtype=int)
    n = len(probs)
    suggested = probs.argmax(1)
    confidence = probs.max(1)
    has_majority = majority >= 0
    p_major = np.where(has_majority, probs[np.arange(n), np.clip(majority, 0, None)], np.nan)
    score = np.where(has_majority, 1.0 - p_major, 0.0) if scores is None else np.asarray(scores, dtype=float)
    reasons: list[str] = []
    flags = np.zeros(n, dtype=int)
    for i in range(n):
        if not has_majority[i]:
            reasons.append("")
            continue
        parts = []
        s, m = classes[suggested[i]], classes[majority[i]]
        if suggested[i] != majority[i]:
            who = "unanimous experts" if consensus[i] else "the majority"
            parts.append(f"model suggests {s} (p={confidence[i]:.2f}) but {who} said {m}")
        if not consensus[i] and confidence[i] < uncertain:
            parts.append(f"experts split and the soft label is uncertain (top p={confidence[i]:.2f})")
        if tie[i]:
            parts.append(f"experts tied; resolved to {m} by the tie rule")
        if parts:
            flags[i] = 1
        reasons.append("; ".join(parts))
    return pd.DataFrame({
        "suggested": [classes[k] for k in suggested],
        "confidence": confidence,
        "flag": flags,
        "flag_reason": reasons,
        "flag_score": score,
    })
