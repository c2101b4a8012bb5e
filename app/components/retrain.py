"""'Retrain with my N reviews': a warm-started run with this run's review decisions as verified labels, then
before -> after.

The reviews are written as an export (rows with source=review: this run's decisions and the verified labels it was
given itself) to WORKSPACE/reviews/<new run>.csv, and the run is launched like any other
(`python -m engine run DATASET --out NEW --from-run RUN --reviewed CSV`; the engine takes every other setting from RUN).
The job's record in the store names RUN (`form.from_run`), which is how this panel finds the retrains of a run.

Session slots: f"{key}_*" (the live panel's).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app import jobs, state


def retrains_of(run: Path) -> list[dict]:
    """Job records of the retrains started from `run`, newest first."""
    key = str(Path(run).resolve())
    return [r for r in state.store().list_runs() if ((r.get("config") or {}).get("form") or {}).get("from_run") == key]


def n_reviews(run: Path) -> int:
    """Images whose label comes from a review in this run's export: its decisions and the verified labels it had."""
    from engine.export import export_labels

    return int((export_labels(run, store=state.store())["source"] == "review").sum())


def launch(run: Path, dataset: Path, method: str) -> Path:
    """Write the reviews and start the retrain; returns the new run folder."""
    from engine.export import export_labels

    run = Path(run).resolve()
    new = state.ws_dir("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{method or 'run'}-retrain"
    while new.exists():
        new = new.with_name(new.name + "b")
    csv = state.ws_dir("reviews") / f"{new.name}.csv"
    export_labels(run, store=state.store(), out=csv)
    jobs.launch(dataset=dataset, run_dir=new, method=method, options=["--from-run", str(run), "--reviewed", str(csv)],
                form={"from_run": str(run), "reviewed": str(csv)})
    state.log.info("retrain of %s with the reviews in %s: %s", run, csv, new)
    return new


def _fmt(measure: str, value) -> str:
    if value is None:
        return "—"
    if "accuracy" in measure:
        return f"{100 * value:.1f} %"
    return f"{value:.1f}" if isinstance(value, float) and not float(value).is_integer() else f"{int(value)}"


def before_after_table(old: Path, new: Path) -> pd.DataFrame:
    from engine.compare import before_after

    rows = before_after(old, new)
    return pd.DataFrame({"": [r["measure"] for r in rows], "before": [_fmt(r["measure"], r["before"]) for r in rows],
                         "after": [_fmt(r["measure"], r["after"]) for r in rows]})


def retrain_panel(*, key: str, run: Path, n_reviews: int) -> None:
    """The button (disabled without reviews) and, for the latest retrain of `run`, its live panel or before -> after."""
    from app.components.job_panel import live_panel
    from app.components.review import dataset_root

    record = state.store().get_run(run) or {}
    method = record.get("method") or ""
    dataset = dataset_root(run)
    c1, c2 = st.columns([1, 2], vertical_alignment="center")
    with c1:
        clicked = st.button(f"Retrain with my {n_reviews} reviews", key=f"{key}_go", type="primary",
                            icon=":material/model_training:", disabled=n_reviews == 0 or dataset is None)
    with c2:
        st.caption("Reviewed images become verified labels (held fixed, and clean training targets); the new run "
                   "starts from this run's model and settings, so it takes about a third of the first run's time.")
    if clicked:
        new = launch(run, dataset, method)
        st.toast(f"Started {new.name}", icon=":material/rocket_launch:")
        st.rerun()
    retrains = retrains_of(run)
    if not retrains:
        return
    new = Path(retrains[0]["run_dir"])
    with st.container(border=True):
        st.markdown("**Latest retrain with your reviews**")
        live_panel(key=f"{key}_live", run_dir=new)
        if (new / "labels.csv").is_file() and (new / "metrics.json").is_file():
            st.markdown("**Before → after**")
            st.table(before_after_table(run, new).set_index(""))
            st.caption("Meta and test accuracy are measured on the same images in both runs; labels changed = images "
                       "whose estimated label differs.")
            if st.button("Review the new run", key=f"{key}_open", icon=":material/rate_review:"):
                state.set_run(new)
                st.switch_page("views/review.py")
