"""Pick a finished run (one with labels.csv) for the Review and Export pages."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state


def finished_runs() -> list[Path]:
    """Runs in the store with a labels.csv, newest first, plus the session's run (e.g. from --run)."""
    runs = [Path(r["run_dir"]) for r in state.store().list_runs()]
    current = state.run_dir()
    if current is not None and current not in runs:
        runs.insert(0, current)
    return [r for r in runs if (r / "labels.csv").is_file()]


def run_picker(*, key: str, purpose: str) -> Path | None:
    """A select box of finished runs (default: the session's run); sets the session's run. None = nothing to show."""
    runs = finished_runs()
    if not runs:
        st.info(f"No finished run to {purpose} yet: train one on the Train page first (it writes the run's "
                "labels.csv with the flagged images).", icon=":material/model_training:")
        st.page_link("views/train.py", label="Go to Train", icon=":material/arrow_forward:")
        return None
    current = state.run_dir()
    index = runs.index(current) if current in runs else 0
    labels = {}
    for r in runs:
        record = state.store().get_run(r)
        method = (record or {}).get("method") or ""
        labels[str(r)] = f"{r.name}" + (f" · {method}" if method and method not in r.name else "")
    choice = st.selectbox("Run", [str(r) for r in runs], index=index, format_func=labels.get, key=f"{key}_{index}",
                          help="the training run whose flagged images and labels you work on")
    if choice != (str(current) if current else None):
        state.set_run(choice)
        st.rerun()  # once: the sidebar, drawn before this page, shows the session's run too
    return Path(choice)
