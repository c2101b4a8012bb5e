"""Small Altair charts that keep the class order (st.bar_chart would sort the classes alphabetically)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

BAR_STEP = 16  # px per bar


def class_bars(frame: pd.DataFrame, *, classes: list[str], value: str, series: str | None = None,
               title: str = "", fmt: str = "d", height: int | None = None) -> None:
    """Horizontal bars per class in `classes` order; `series` (optional) groups bars by a column (e.g. set)."""
    y = alt.Y("class:N", sort=list(classes), title=None)
    x = alt.X(f"{value}:Q", title=title or value)
    enc = {"y": y, "x": x, "tooltip": [alt.Tooltip("class:N"), alt.Tooltip(f"{value}:Q", format=fmt)]}
    if series:
        enc["color"] = alt.Color(f"{series}:N", title=None, legend=alt.Legend(orient="bottom"))
        enc["yOffset"] = alt.YOffset(f"{series}:N")
        enc["tooltip"].append(alt.Tooltip(f"{series}:N"))
    # Height per bar (a step), not a fixed total: with a fixed height, Streamlit's theme fits the bottom legend
    # into it and the grouped bars collapse into a thin strip with overlapping labels.
    size = height if height and not series else alt.Step(BAR_STEP if series else 2 * BAR_STEP)
    chart = alt.Chart(frame).mark_bar().encode(**enc).properties(height=size)
    st.altair_chart(chart, width="stretch")
