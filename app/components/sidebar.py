"""The sidebar context shown on every page: open dataset, saved meta set, selected run, workspace."""

from __future__ import annotations

import streamlit as st

from app import state
from app.plain import code, md


def context(*, key: str) -> None:
    from app import jobs
    from app.components import dataset as ds

    with st.sidebar:
        dataset = state.dataset()
        if dataset is None:
            st.caption("No dataset open yet.")
        else:
            st.markdown(f"**Dataset** · {md(dataset.name)}")
            if ds.is_demo(dataset):
                st.caption(":orange-badge[SYNTHETIC demo data]")
            if ds.roles_file(dataset).exists():
                st.caption("Meta set saved ✓")
        run = state.run_dir()
        if run is not None:
            record = None
            try:
                record = state.store().get_run(run)
            except Exception:
                state.log.exception("store unavailable")
            job_state = jobs.view(record).state if record else ("done" if (run / "labels.csv").exists() else "?")
            st.markdown("**Run**")
            st.text(f"{run.name} ({job_state})")
        if dataset is not None:
            training = [v for v in (jobs.view(r) for r in state.store().list_runs(dataset=dataset)
                                    if r["state"] in jobs.ACTIVE) if v.active and v.run_dir != run]
            for v in training[:3]:
                st.caption(":blue-badge[training]")
                st.text(v.name)
        st.caption(f"Workspace: {code(state.workspace())}")
