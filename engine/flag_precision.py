"""How precise were a run's flags? Realised precision from the clinician's decisions beside the estimator's prediction.

For the images a reviewer has decided (their latest non-skip decision, engine/store.py):
  - realised precision = the share of reviewed *flagged* images whose label the reviewer changed (decision ≠ the
    experts' majority), with a 95 % Wilson score interval (few decisions give a wide one);
  - predicted precision = what the label estimate expected for the same images: their mean `flag_score`
    (P(majority wrong)); and for the whole queue, the mean `flag_score` of every flagged image;
  - errors left = Σ `flag_score` over the reviewable images nobody has decided yet (graded, not in the meta set, not
    verified): the expected number of wrong majority labels still in the data.
Flag-score and value orderings put the likeliest errors first, so the realised precision of the first images is
above the whole queue's; in a random order (engine/active.py) it estimates the queue's precision without bias.
Reviewed unflagged images (e.g. a random audit) give the miss rate: `changed_unflagged` / `reviewed_unflagged`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.data import schema as S


def wilson_interval(successes: int, n: int) -> tuple[float, float] | None:
    """95 % Wilson score interval of a proportion (statsmodels), None without observations."""
    if n <= 0:
        return None
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def flag_precision(labels: pd.DataFrame, decisions: pd.DataFrame) -> dict:
    """labels: a run's labels.csv as read by `engine.export.read_labels` (strings); decisions: the current decision
    per image (columns `image`, `new_label`, e.g. `WorkspaceStore.current_decisions(run)`). Returns plain numbers:
    n_flagged, reviewed_flagged, changed_flagged, realised_precision (None without reviews), realised_interval,
    predicted_precision (same images), predicted_precision_queue (all flagged), reviewed_unflagged,
    changed_unflagged, n_undecided, errors_left."""
    decided = dict(zip(decisions["image"], decisions["new_label"], strict=True)) if len(decisions) else {}
    images = labels[S.IMAGE].to_numpy()
    majority = labels[S.MAJORITY].to_numpy()
    flag = labels[S.FLAG].map(S.parse_bool).eq(True).to_numpy()
    score = pd.to_numeric(labels[S.FLAG_SCORE], errors="coerce").fillna(0.0).to_numpy()
    verified = labels[S.VERIFIED].map(S.parse_bool).eq(True).to_numpy() if S.VERIFIED in labels else np.zeros(len(labels), bool)
    reviewable = (majority != "") & (labels[S.ROLE].to_numpy() != S.META) & ~verified
    has = np.array([img in decided for img in images], dtype=bool)
    changed = np.array([img in decided and decided[img] != m for img, m in zip(images, majority, strict=True)])
    rf, ru = has & flag, has & ~flag & reviewable
    n_rf, n_cf = int(rf.sum()), int((changed & rf).sum())
    return {
        "n_flagged": int(flag.sum()),
        "reviewed_flagged": n_rf,
        "changed_flagged": n_cf,
        "realised_precision": n_cf / n_rf if n_rf else None,
        "realised_interval": wilson_interval(n_cf, n_rf),
        "predicted_precision": float(score[rf].mean()) if n_rf else None,
        "predicted_precision_queue": float(score[flag].mean()) if flag.any() else None,
        "reviewed_unflagged": int(ru.sum()),
        "changed_unflagged": int((changed & ru).sum()),
        "n_undecided": int((reviewable & ~has).sum()),
        "errors_left": float(score[reviewable & ~has].sum()),
    }


def describe(p: dict) -> list[str]:
    """The numbers of `flag_precision` as lines for people (the CLI's `metrics`)."""
    lines = []
    if p["reviewed_flagged"]:
        lo, hi = p["realised_interval"]
        lines.append(f"flag precision: realised {p['changed_flagged']}/{p['reviewed_flagged']} = "
                     f"{100 * p['realised_precision']:.0f} % (95 % interval {100 * lo:.0f}–{100 * hi:.0f} %) vs "
                     f"predicted {100 * p['predicted_precision']:.0f} % for the same images")
    else:
        lines.append("flag precision: no flagged image reviewed yet")
    if p["predicted_precision_queue"] is not None:
        lines.append(f"predicted precision of the whole queue ({p['n_flagged']} flagged): "
                     f"{100 * p['predicted_precision_queue']:.0f} %")
    if p["reviewed_unflagged"]:
        lines.append(f"unflagged images reviewed: {p['reviewed_unflagged']}, changed {p['changed_unflagged']}")
    lines.append(f"wrong majority labels expected in the {p['n_undecided']} undecided images: {p['errors_left']:.1f}")
    return lines
