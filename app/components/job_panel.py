"""A run's live panel (a fragment polling status.json and progress.jsonl every 2 s) and the runs table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import jobs, state
from app.components.run_warnings import expected_wrong, warnings_box
from app.plain import md

POLL_S = 2


def _fmt_duration(seconds: float | None) -> str:
    """engine.progress.fmt_seconds ("12 min 34 s"), with "—" for an unknown duration."""
    from engine.progress import fmt_seconds

    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    return fmt_seconds(seconds)


STAGES = {"setup": "Setting up (loading images)", "pretrain": "DR pretraining", "warmup": "Warm-up (cross-entropy)",
          "main": "Main phase", "crossfit": "Label estimation (cross-fitting)", "done": "Done"}


def progress_fraction(status: dict) -> float:
    """Overall progress in [0, 1] from status.json (tolerates missing keys)."""
    try:
        of = max(int(status.get("of") or 0), 1)
        epoch = int(status.get("epoch") or 0)
        steps = max(int(status.get("steps") or 0), 1)
        step = int(status.get("step") or 0)
    except (TypeError, ValueError):
        return 0.0
    if status.get("state") == "done":
        return 1.0
    if status.get("stage") in ("pretrain", "setup"):
        return 0.0
    if status.get("stage") == "crossfit":  # folds one after the other, each with its own epochs
        try:
            folds, fold = max(int(status.get("folds") or 1), 1), int(status.get("fold") or 1)
        except (TypeError, ValueError):
            return 0.0
        return float(min(1.0, max(0.0, (fold - 1 + epoch / of) / folds)))
    return float(min(1.0, max(0.0, (max(epoch - 1, 0) + step / steps) / of)))


def status_line(status: dict) -> str:
    stage = status.get("stage") or ""
    parts = [STAGES.get(stage, stage.capitalize() or "Starting")]
    if status.get("fold") and status.get("folds"):
        parts.append(f"fold {status['fold']}/{status['folds']}")
    if status.get("epoch") and status.get("of") and stage not in ("setup", "done"):
        parts.append(f"epoch {status['epoch']}/{status['of']}")
    if status.get("step") and status.get("steps"):
        parts.append(f"step {status['step']}/{status['steps']}")
    eta = status.get("eta_s")
    if isinstance(eta, (int, float)) and stage != "done":
        parts.append(f"about {_fmt_duration(eta)} left")
    return " · ".join(parts)


def curves(run_dir: Path) -> None:
    """Loss per step and meta/test accuracy per epoch from progress.jsonl (missing keys are skipped)."""
    records = jobs.read_progress(run_dir)
    steps = [r for r in records if "loss" in r and r.get("event") != "epoch_end" and r.get("stage") != "pretrain"]
    epochs = [r for r in records if r.get("event") == "epoch_end"]
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Training loss**")
        if steps:
            frame = pd.DataFrame({"step": range(1, len(steps) + 1),
                                  "loss": [r.get("loss") for r in steps],
                                  "stage": [r.get("stage", "") for r in steps]})
            st.line_chart(frame, x="step", y="loss", color="stage", height=220)
        else:
            st.caption("The curve appears with the first training steps.")
    with c2:
        st.markdown("**Accuracy per epoch** (meta set selects the model)")
        rows = [{"epoch": int(r.get("epoch", 0)) + 1, "meta set": r.get("meta_acc"), "test set": r.get("test_acc")}
                for r in epochs if r.get("stage") != "pretrain"]
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame = frame.dropna(axis=1, how="all")
        if frame.empty or len(frame.columns) < 2:
            st.caption("Accuracies appear after the first epoch.")
        else:
            st.line_chart(frame, x="epoch", height=220, y_label="accuracy")


def _metrics_row(run_dir: Path) -> None:
    m = jobs.read_metrics(run_dir)
    if not m:
        return
    cols = st.columns(5)
    cols[0].metric("Meta accuracy", _pct(m.get("meta_acc")), help="of the selected model (best epoch on the meta set)")
    cols[1].metric("Test accuracy", _pct(m.get("test_acc")), help="reported only; never used to choose the model")
    cols[2].metric("Flagged for review", m.get("n_flagged", "—"))
    wrong = expected_wrong(run_dir)
    cols[3].metric("Expected label errors", "—" if wrong is None else f"{wrong:.0f}",
                   help="how many majority labels the model expects to be wrong; far more flagged images than "
                        "this means a long review for few errors")
    cols[4].metric("Best epoch", m.get("best_epoch", "—"), help=f"stage: {m.get('selected_stage') or '—'}")
    warnings_box(key="train_warn", run_dir=run_dir)


def _pct(x) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{100 * x:.1f} %"


def _failure(key: str, job: jobs.JobView) -> None:
    st.error(f"**The run {job.state}.** {md(job.message)}", icon=":material/error:" if job.state == "failed" else ":material/cancel:")
    if jobs.can_resume(job):
        st.button("Resume", key=f"{key}_resume", type="primary", icon=":material/play_arrow:",
                  on_click=_resume, args=(job,),
                  help="continue from the last finished epoch (checkpoint.pt) with the same settings; on the CPU "
                       "the result equals an uninterrupted run")
    log = jobs.log_tail(job.run_dir)
    console = jobs.log_tail(job.run_dir, console=True)
    if log:
        st.markdown("End of `log.txt`:")
        st.code(log, language=None)
    if console:
        with st.expander("Console output (stdout/stderr)", expanded=not log):
            st.code(console, language=None)


def _resume(job: jobs.JobView) -> None:
    try:
        jobs.resume(job)
    except Exception as exc:  # shown by the page's next run; the traceback goes to app.log
        state.log.exception("could not resume %s", job.run_dir)
        st.session_state["job_panel_error"] = f"Could not resume {md(job.name)}: {type(exc).__name__}: {md(exc)}"


def _body(key: str, job: jobs.JobView) -> None:
    error = st.session_state.pop("job_panel_error", None)
    if error:
        st.error(error, icon=":material/error:")
    badge = {"running": ":blue-badge[running]", "queued": ":gray-badge[queued]", "done": ":green-badge[done]",
             "failed": ":red-badge[failed]", "cancelled": ":orange-badge[cancelled]"}.get(job.state, job.state)
    st.markdown(f"**{md(job.name)}** · {md(job.method)} · {badge}")
    if job.active:
        cancelling = bool((job.record.get("config") or {}).get("cancel_requested"))
        if not job.status:
            st.progress(0.0, text="Starting: loading the engine, the images and the model…")
        else:
            st.progress(progress_fraction(job.status), text=status_line(job.status))
        if cancelling:
            st.caption("Stopping… (the run finishes its current step and keeps its last checkpoint)")
        else:
            st.button("Cancel run", key=f"{key}_cancel", icon=":material/cancel:", on_click=jobs.cancel, args=(job,),
                      help="stops the run (it keeps its last finished epoch; the CLI can --resume it)")
    elif job.state == "done":
        st.progress(1.0, text=f"Done in {_fmt_duration(jobs.duration_s(job))}")
        _metrics_row(job.run_dir)
    else:
        _failure(key, job)
    if job.run_dir.is_dir():
        curves(job.run_dir)


def live_panel(*, key: str, run_dir: Path) -> None:
    """One run: live while active (fragment re-run every 2 s), static otherwise. Owns st.session_state[key+"_*"]."""
    record = state.store().get_run(run_dir)
    if record is None:
        st.info("This run is not in the workspace's job list.")
        return
    job = jobs.view(record)
    if not job.active:
        _body(key, job)
        return

    @st.fragment(run_every=POLL_S)
    def _live() -> None:
        current = jobs.view(state.store().get_run(run_dir))
        if not current.active:
            st.rerun()  # the whole page: the runs table and the next steps change
        _body(key, current)

    _live()


def ordered_jobs(dataset: Path | None) -> list[jobs.JobView]:
    """The runs of a dataset (all runs when None) as the app shows them: running ones first, then newest first."""
    records = state.store().list_runs(dataset=dataset) if dataset else state.store().list_runs()
    views = [jobs.view(r) for r in records]
    return sorted(views, key=lambda v: not v.active)  # stable: keeps the store's newest-first order


def _cell_pct(x) -> str:
    return f"{100 * x:.1f} %" if isinstance(x, (int, float)) else ""


def runs_table(*, key: str, views: list[jobs.JobView]) -> Path | None:
    """The runs (`ordered_jobs`), one row each; returns the run the user selected (or None).

    Start and duration come from the run folder; a value that does not exist yet is an empty cell."""
    if not views:
        st.caption("No runs yet: launch one above.")
        return None
    rows = []
    for v in views:
        m = jobs.read_metrics(v.run_dir) if v.state == "done" else {}
        started = jobs.started_at(v)
        seconds = jobs.duration_s(v)
        flagged = m.get("n_flagged")
        rows.append({
            "run": v.name, "status": v.state, "method": v.method,
            "meta acc": _cell_pct(m.get("meta_acc")), "test acc": _cell_pct(m.get("test_acc")),
            "flagged": str(flagged) if isinstance(flagged, int) else "",
            "started": started.astimezone().strftime("%Y-%m-%d %H:%M") if started else "",
            "duration": _fmt_duration(seconds) if seconds is not None else "",
        })
    event = st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key=f"{key}_table_{len(views)}",
                         on_select="rerun", selection_mode="single-row")
    selected = event.selection.rows if event and hasattr(event, "selection") else []
    return views[selected[0]].run_dir if selected else None
