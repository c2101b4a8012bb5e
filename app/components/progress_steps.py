"""The workflow checklist on the Overview page: one card per step with its state and a link."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state
from app.plain import md


def _card(number: int, title: str, page: str, done: bool, text: str, *, enabled: bool = True) -> None:
    with st.container(border=True, height=165):
        mark = ":green[:material/check_circle:]" if done else ":gray[:material/radio_button_unchecked:]"
        st.markdown(f"{mark} **{number} · {title}**")
        st.caption(text)
        st.page_link(page, label=f"Go to {title}", icon=":material/arrow_forward:", disabled=not enabled)


def steps(*, key: str, dataset: Path | None, run: Path | None) -> None:
    from app import jobs
    from app.components import dataset as ds

    store = state.store()
    cols = st.columns(5)
    with cols[0]:
        text = f"{ds.display_name(dataset)}" if dataset else "Open the demo dataset, a folder or a zip."
        _card(1, "Data", "views/data.py", dataset is not None, text)
    roles_saved = bool(dataset and ds.roles_file(dataset).exists())
    run_roles = run_role_counts(run) if run is not None and not roles_saved else None
    with cols[1]:
        if roles_saved:
            roles = store.load_roles(dataset)
            n_meta = sum(r == "meta" for r in roles.values())
            n_test = sum(r == "test" for r in roles.values())
            text = f"Saved: {n_meta} meta and {n_test} test images."
        elif run_roles is not None:
            text = (f"The run used the engine's proposed split: {run_roles.get('meta', 0)} meta and "
                    f"{run_roles.get('test', 0)} test images. Check it by eye before the next run.")
        else:
            text = "Propose a meta and test set from consensus images, then check it by eye."
        _card(2, "Meta set", "views/meta.py", roles_saved or run_roles is not None, text, enabled=dataset is not None)
    runs = [jobs.view(r) for r in store.list_runs(dataset=dataset)] if dataset else []
    done_runs = [r for r in runs if r.state == "done"]
    with cols[2]:
        if runs:
            text = f"{len(runs)} run(s): latest {runs[0].name} is {runs[0].state}."
        else:
            text = "Train a model on the votes (methods ce, mslg, metalabelnet, …)."
        _card(3, "Train", "views/train.py", bool(done_runs), text, enabled=dataset is not None)
    progress = review_progress(run) if run is not None else None
    with cols[3]:
        if progress is None:
            text = "Check the flagged images one by one."
        else:
            text = f"{progress[0]} of {progress[1]} flagged images reviewed."
        done = progress is not None and progress[0] >= progress[1]
        _card(4, "Review", "views/review.py", done, text, enabled=bool(done_runs) or run is not None)
    from app.components.export_view import EXPORT_NAME

    exported = bool(run and (run / EXPORT_NAME).exists())
    with cols[4]:
        text = "Cleaned labels written." if exported else "Download the cleaned labels with their provenance."
        _card(5, "Export", "views/export.py", exported, text, enabled=run is not None)


def run_role_counts(run: Path) -> dict[str, int] | None:
    """{role: images} of the roles a run used (its roles.csv), or None when it has none (yet)."""
    import pandas as pd

    try:
        roles = pd.read_csv(run / "roles.csv", dtype=str, keep_default_na=False)["role"]
    except (OSError, KeyError, ValueError):
        return None
    return {str(k): int(v) for k, v in roles.value_counts().items()}


def review_progress(run: Path) -> tuple[int, int] | None:
    """(flagged images with a decision in force, flagged images) of a finished run; None without labels.csv."""
    from app.components import review as rv

    if not (run / "labels.csv").is_file():
        return None
    flagged = set(rv.queue(rv.load_labels(run)[0])["image"])
    decided = set(state.store().current_decisions(run)["image"])
    return len(flagged & decided), len(flagged)


def run_summary(*, key: str, run: Path | None) -> None:
    """The selected run at a glance: accuracy, flagged images, review progress."""
    from app import jobs

    if run is None or not (run / "labels.csv").exists():
        return
    metrics = jobs.read_metrics(run)
    store = state.store()
    decided = len(store.current_decisions(run))
    flagged = metrics.get("n_flagged")
    st.markdown(f"**Run {md(run.name)}** · {md(metrics.get('method', ''))}")
    cols = st.columns(4)
    meta = metrics.get("meta_acc")
    test = metrics.get("test_acc")
    cols[0].metric("Meta accuracy", f"{100 * meta:.1f} %" if isinstance(meta, (int, float)) else "—")
    cols[1].metric("Test accuracy", f"{100 * test:.1f} %" if isinstance(test, (int, float)) else "—")
    cols[2].metric("Flagged for review", flagged if flagged is not None else "—")
    cols[3].metric("Decisions recorded", decided)
