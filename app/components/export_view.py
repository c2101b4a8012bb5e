"""Export summaries: what changed (majority -> final label), counts by source, per-expert agreement."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.data.aggregate import parse_votes

EXPORT_NAME = "labels_cleaned.csv"  # written into the run folder, next to labels.csv (+ .provenance.json)


def change_table(frame: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Rows = majority vote ('(none)' = nobody graded), columns = final label; counts of images."""
    majority = frame["majority"].fillna("").replace("", "(none)")
    rows = [*classes, "(none)"] if (majority == "(none)").any() else list(classes)
    tab = pd.crosstab(pd.Categorical(majority, categories=rows), pd.Categorical(frame["final_label"], categories=classes),
                      dropna=False)
    tab.index.name, tab.columns.name = "majority vote", "final label"
    return tab


def expert_agreement_with_final(frame: pd.DataFrame) -> pd.DataFrame:
    """Per expert: images graded, share of their votes equal to the final label and to the majority."""
    rows: dict[str, dict[str, int]] = {}
    for votes, final, majority in zip(frame["votes"], frame["final_label"], frame["majority"], strict=True):
        for expert, vote in parse_votes(votes).items():
            r = rows.setdefault(expert, {"graded": 0, "final": 0, "majority": 0})
            r["graded"] += 1
            r["final"] += int(vote == final)
            r["majority"] += int(vote == majority)
    return pd.DataFrame([
        {"expert": e, "images graded": r["graded"], "agrees with final label": r["final"] / r["graded"],
         "agrees with majority": r["majority"] / r["graded"]} for e, r in rows.items() if r["graded"]])


def summary(frame: pd.DataFrame, classes: list[str]) -> None:
    from engine.export import counts_by_source

    counts = counts_by_source(frame)
    changed = int((frame["final_label"] != frame["majority"]).sum() - (frame["majority"] == "").sum())
    cols = st.columns(6)
    cols[0].metric("Images", len(frame))
    cols[1].metric("Changed in review", max(changed, 0), help="images whose final label differs from the experts' "
                   "majority vote")
    for col, (source, help_text) in zip(cols[2:], [
            ("consensus", "all graders agreed: their label is kept"),
            ("review", "decided by a reviewer on the Review page"),
            ("majority", "graders split, not reviewed: the majority vote is kept"),
            ("model", "nobody graded the image: the model's suggestion")], strict=True):
        col.metric(f"Source: {source}", counts.get(source, 0), help=help_text)
    left, right = st.columns([1, 1.3])
    with left:
        st.markdown("**Majority vote → final label**")
        st.dataframe(change_table(frame, classes), width="stretch")
        st.caption("The diagonal keeps the majority; every other cell is a change made in review.")
    with right:
        st.markdown("**Per-expert agreement with the final labels**")
        st.dataframe(expert_agreement_with_final(frame), hide_index=True, width="stretch", column_config={
            "agrees with final label": st.column_config.ProgressColumn(min_value=0, max_value=1, format="percent"),
            "agrees with majority": st.column_config.ProgressColumn(min_value=0, max_value=1, format="percent")})
