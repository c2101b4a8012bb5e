"""A run's live panel (a fragment polling status.json and progress.jsonl every 2 s) and the runs table."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from app import jobs, state
from app.plain import md

POLL_S = 2


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def duration(job: jobs.JobView) -> float | None:
    started = _parse_time(job.record.get("started_at"))
    if started is None:
        return None
    finished = _parse_time(job.record.get("finished_at"))
    if finished is None and not job.active:
        elapsed = job.status.get("elapsed_s")
        return float(elapsed) if isinstance(elapsed, (int, float)) else None
    end = finished or datetime.now(started.tzinfo)
    return (end - started).total_seconds()


STAGES = {"setup": "Setting up (loading images)", "pretrain": "DR pretraining", "warmup": "Warm-up (cross-entropy)",
          "main": "Main phase", "done": "Done"}


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
    return float(min(1.0, max(0.0, (max(epoch - 1, 0) + step / steps) / of)))


def status_line(status: dict) -> str:
    stage = status.get("stage") or ""
    parts = [STAGES.get(stage, stage.capitalize() or "Starting")]
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
    cols = st.columns(4)
    cols[0].metric("Meta accuracy", _pct(m.get("meta_acc")), help="of the selected model (best epoch on the meta set)")
    cols[1].metric("Test accuracy", _pct(m.get("test_acc")), help="reported only; never used to choose the model")
    cols[2].metric("Flagged for review", m.get("n_flagged", "—"))
    cols[3].metric("Best epoch", m.get("best_epoch", "—"))


def _pct(x) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{100 * x:.1f} %"


def _failure(job: jobs.JobView) -> None:
    st.error(f"**The run {job.state}.** {md(job.message)}", icon=":material/error:" if job.state == "failed" else ":material/cancel:")
    log = jobs.log_tail(job.run_dir)
    console = jobs.log_tail(job.run_dir, console=True)
    if log:
        st.markdown("End of `log.txt`:")
        st.code(log, language=None)
    if console:
        with st.expander("Console output (stdout/stderr)", expanded=not log):
            st.code(console, language=None)


def _body(key: str, job: jobs.JobView) -> None:
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
        st.progress(1.0, text=f"Done in {_fmt_duration(duration(job))}")
        _metrics_row(job.run_dir)
    else:
        _failure(job)
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


def runs_table(*, key: str, dataset: Path | None) -> Path | None:
    """Runs of this dataset, newest first; returns the run the user selected (or None)."""
    records = state.store().list_runs(dataset=dataset) if dataset else state.store().list_runs()
    if not records:
        st.caption("No runs yet: launch one above.")
        return None
    rows = []
    views = [jobs.view(r) for r in records]
    for v in views:
        m = jobs.read_metrics(v.run_dir) if v.state == "done" else {}
        started = _parse_time(v.record.get("started_at"))
        rows.append({
            "run": v.name, "status": v.state, "method": v.method,
            "meta acc": m.get("meta_acc"), "test acc": m.get("test_acc"), "flagged": m.get("n_flagged"),
            "started": started.astimezone().strftime("%Y-%m-%d %H:%M") if started else "",
            "duration": _fmt_duration(duration(v)),
        })
    frame = pd.DataFrame(rows)
    for col in ("meta acc", "test acc", "flagged"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")  # missing -> empty cell, not "None"
    event = st.dataframe(
        frame, hide_index=True, width="stretch", key=f"{key}_table_{len(records)}", on_select="rerun", selection_mode="single-row",
        column_config={"meta acc": st.column_config.NumberColumn(format="percent"),
                       "test acc": st.column_config.NumberColumn(format="percent"),
                       "flagged": st.column_config.NumberColumn(format="%d")},
    )
    selected = event.selection.rows if event and hasattr(event, "selection") else []
    return views[selected[0]].run_dir if selected else None
