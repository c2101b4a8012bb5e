"""Browse a dataset's images with their votes: filters (class, agreement, expert), paged thumbnail grid."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app.components import thumbs
from app.plain import md

AGREEMENT = {
    "all images": None,
    "unanimous (consensus)": "consensus",
    "split vote": "split",
    "tie (resolved to the more severe class)": "tie",
    "one grader only": "single",
    "nobody graded": "ungraded",
}


def votes_caption(row: dict, experts: list[str], *, extra: str = "") -> str:
    """Markdown under a thumbnail: file name, majority, each expert's vote (disagreements in orange). Names and
    classes come from votes.csv and are escaped (`md`); `extra` is Markdown the caller built."""
    majority = row.get("majority") or ""
    graded = [(e, row.get(e, "")) for e in experts if row.get(e, "")]
    head = f"**{md(Path(row['image']).name)}** · {md(majority) if majority else 'not graded'}"
    if len(graded) > 1 and all(v == majority for _, v in graded):
        votes = f"all {len(graded)} graders agree"
    else:
        votes = " · ".join(f"{md(e)}: :orange[{md(v)}]" if majority and v != majority else f"{md(e)}: {md(v)}"
                           for e, v in graded)
    return head + (f"  \n{votes}" if votes else "") + (f"  \n{extra}" if extra else "")


def frame_with_votes(table, agg: pd.DataFrame) -> pd.DataFrame:
    """table.frame (image, role, patient_id, note, experts...) joined with the aggregate columns."""
    cols = ["votes", "majority", "tie", "consensus", "n_graders", "agreement"]
    return pd.concat([table.frame.reset_index(drop=True), agg[cols].reset_index(drop=True)], axis=1)


def filter_rows(frame: pd.DataFrame, experts: list[str], *, classes: list[str], agreement: str | None,
                expert: str | None, expert_mode: str) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    if classes:
        mask &= frame["majority"].isin(classes)
    if agreement == "consensus":
        mask &= frame["consensus"].astype(bool)
    elif agreement == "split":
        mask &= (frame["n_graders"] >= 2) & ~frame["consensus"].astype(bool)
    elif agreement == "tie":
        mask &= frame["tie"].astype(bool)
    elif agreement == "single":
        mask &= frame["n_graders"] == 1
    elif agreement == "ungraded":
        mask &= frame["n_graders"] == 0
    if expert:
        graded = frame[expert] != ""
        mask &= graded & (frame[expert] != frame["majority"]) if expert_mode == "disagrees" else graded
    return frame[mask]


def image_browser(table, agg: pd.DataFrame, *, key: str, page_size: int = 24, columns: int = 6) -> None:
    """Filters + paged grid. Owns st.session_state[f"{key}_*"]."""
    frame = frame_with_votes(table, agg)
    experts = list(table.experts)
    c1, c2, c3, c4 = st.columns([2, 2, 1.4, 1.4])
    with c1:
        classes = st.multiselect("Majority class", table.classes, key=f"{key}_classes", placeholder="all classes")
    with c2:
        agreement = AGREEMENT[st.selectbox("Agreement", list(AGREEMENT), key=f"{key}_agreement")]
    with c3:
        expert = st.selectbox("Expert", ["any expert", *experts], key=f"{key}_expert")
    with c4:
        expert_mode = st.selectbox("Expert's votes", ["graded by", "disagrees"], key=f"{key}_expert_mode",
                                   disabled=expert == "any expert",
                                   help="'disagrees': the expert's vote differs from the majority")
    shown = filter_rows(frame, experts, classes=classes, agreement=agreement,
                        expert=None if expert == "any expert" else expert, expert_mode=expert_mode)
    if shown.empty:
        st.info("No image matches these filters.")
        return
    sl = thumbs.pager(len(shown), key=f"{key}_page", page_size=page_size)
    items = [{"path": str(Path(table.root) / r["image"]), "caption": votes_caption(r, experts)}
             for r in shown.iloc[sl].to_dict("records")]
    thumbs.grid(items, key=f"{key}_grid", columns=columns)
