"""The review queue's order: by the expected value of a review, by flag score, or random (for audits).

The expected value comes from `engine.active` (the rule is documented there): it is refreshed from the run's saved
model probabilities and the decisions made so far (the estimator re-run, no training) after every `REFRESH_EVERY`
decisions, so the order stays put while the reviewer works through a batch. A run without prior.csv (written before
this feature) uses the values of its labels.csv. Random is a fixed permutation of the queue: the realised precision of
its first images estimates the whole queue's (see the precision caption).

Session slot: f"{key}_order" (the chosen ordering).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import jobs

REFRESH_EVERY = 5
LABELS = {"value": "Expected value", "flag_score": "Flag score", "random": "Random (audit)"}
HELP = ("Expected value: the probability that the tool's current label of the image is wrong, weighted by how far "
        "apart the classes are; your reviews there improve the labels and the retrained model most (refreshed every "
        "5 decisions). Flag score: the probability that the experts' majority label is wrong; finds the labels the "
        "export would keep wrongly first. Random: a fixed random order, so the share of changed labels among the "
        "first images you review estimates the precision of the whole queue.")


@st.cache_data(max_entries=16, show_spinner=False)
def _refreshed(run: str, mtime: float, decisions: tuple[tuple[str, str], ...]) -> dict[str, float] | None:
    from engine.active import refresh

    fresh = refresh(run, dict(decisions))
    return None if fresh is None else dict(zip(fresh.images, map(float, fresh.value), strict=True))


def _from_labels(run: Path, labels: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    from engine.active import review_value
    from engine.data.schema import META, VERIFIED, parse_bool, prob_cols

    ordinal = bool(jobs.read_metrics(run).get("ordinal", False))
    index = {c: k for k, c in enumerate(classes)}
    post = labels[prob_cols(classes)].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy()
    majority = np.array([index.get(m, -1) for m in labels["majority"]])
    known = (labels["role"] == META).to_numpy() | labels[VERIFIED].map(parse_bool).eq(True).to_numpy()
    return dict(zip(labels["image"], map(float, review_value(post, majority, ordinal=ordinal, known=known)), strict=True))


def review_values(run: Path, labels: pd.DataFrame, classes: list[str], decisions: pd.DataFrame) -> dict[str, float]:
    """image -> expected value of a review, after the decisions made so far (in batches of REFRESH_EVERY)."""
    done = decisions.sort_values("id") if len(decisions) else decisions
    done = done.iloc[: len(done) // REFRESH_EVERY * REFRESH_EVERY]
    pairs = tuple(zip(done["image"], done["new_label"], strict=True)) if len(done) else ()
    labels_path = Path(run) / "labels.csv"
    fresh = _refreshed(str(run), os.stat(labels_path).st_mtime, pairs)
    return fresh if fresh is not None else _from_labels(Path(run), labels, classes)


def order_queue(key: str, run: Path, labels: pd.DataFrame, classes: list[str], q: pd.DataFrame,
                decisions: pd.DataFrame) -> pd.DataFrame:
    """Render the ordering choice and return the queue `q` in that order, with a `_value` column."""
    from engine.active import order

    choice = st.segmented_control("Order", list(LABELS), format_func=LABELS.get, default="value",
                                  key=f"{key}_order", help=HELP) or "value"
    values = review_values(run, labels, classes, decisions)
    q = q.assign(_value=[values.get(img, 0.0) for img in q["image"]])
    positions = order({"value": q["_value"].to_numpy(), "flag_score": q["_score"].to_numpy()}, choice,
                      seed=len(q))
    return q.iloc[positions].reset_index(drop=True)
