"""3 · Train: choose a method and its settings, launch a run in the background, watch it, compare runs."""

import time
from pathlib import Path

import streamlit as st

from app import jobs, state
from app.components import dataset as ds
from app.components.errors import guard
from app.components.job_panel import live_panel, ordered_jobs, runs_table
from app.components.train_form import methods_info, train_form
from app.plain import md

# the Makefile's `make demo` settings: small images and few epochs, so the demo trains in minutes on a CPU
DEMO_DEFAULTS = {("data", "image_size"): 64, ("schedule", "epochs"): 12, ("schedule", "warmup_epochs"): 4,
                 ("schedule", "lr_milestones"): "8", ("schedule", "batch_size"): 32}

PICKED = "train_picked"  # the run this session chose to watch (a table row or a launch); str path


def panel_run(runs: list[jobs.JobView]):
    """The run shown in the panel: the one this session picked or launched, else a running one (a reload during a
    run comes back to it), else the session's run, else the newest."""
    folders = [v.run_dir for v in runs]
    picked = st.session_state.get(PICKED)
    active = [v.run_dir for v in runs if v.active]
    for candidate in ([Path(picked)] if picked else []) + active[:1] + [state.run_dir()]:
        if candidate in folders:
            return candidate
    return folders[0] if folders else None


st.title("Train")
dataset = state.dataset()
if dataset is None:
    st.info("Open a dataset on the Data page first.", icon=":material/folder_open:")
    st.page_link("views/data.py", label="Go to Data", icon=":material/arrow_forward:")
    st.stop()

st.caption(f"Dataset: **{md(ds.display_name(dataset))}**. Training runs in the background as its own process: you can "
           "leave this page, refresh it or restart the app; the run goes on and is found again.")

roles_path = ds.roles_file(dataset)
if roles_path.exists():
    roles = state.store().load_roles(dataset)
    n_meta = sum(r == "meta" for r in roles.values())
    n_test = sum(r == "test" for r in roles.values())
    st.success(f"Uses your saved meta set: {n_meta} meta and {n_test} test images.", icon=":material/fact_check:")
else:
    st.warning("No meta set saved: the engine will propose one itself. Check it on the Meta set page first "
               "if you can.", icon=":material/fact_check:")

runs = ordered_jobs(dataset)  # running ones first
panel_slot = st.container()  # the selected run's panel goes first; it is filled once the runs table has been read

with st.expander("New run", expanded=not runs, icon=":material/rocket_launch:"):
    demo = ds.is_demo(dataset)
    if demo:
        st.caption("Settings preset for the synthetic demo (64 px images, 12 epochs): it trains in minutes on a CPU. "
                   f"The demo also ships a DR-like set for pretraining: `{dataset / 'dr_aux'}`.")
    request = None
    with guard("read the available methods"):
        request = train_form(key="train", methods=methods_info(), defaults=DEMO_DEFAULTS if demo else None,
                             gpus=jobs.gpu_count())
    if request is not None:
        with guard("launch the run"):
            options = list(request["options"])
            if roles_path.exists():
                options += ["--roles", str(roles_path)]
            classes = ds.classes_for(dataset)
            if classes:
                options += ["--classes", ",".join(classes)]
            run_dir = state.ws_dir("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{request['method']}"
            while run_dir.exists():
                run_dir = run_dir.with_name(run_dir.name + "b")
            jobs.launch(dataset=dataset, run_dir=run_dir, method=request["method"], options=options,
                        form=request["values"])
            state.set_run(run_dir)
            st.session_state[PICKED] = str(run_dir)
            st.toast(f"Started {run_dir.name}", icon=":material/rocket_launch:")
            st.rerun()

if runs:
    st.subheader("All runs")
    st.caption("Select a row to show that run above.")
selected = runs_table(key="train_runs", views=runs)
if selected is not None:
    state.set_run(selected)
    st.session_state[PICKED] = str(selected)
current = panel_run(runs)
if current is not None:
    with panel_slot, st.container(border=True):
        live_panel(key="train_live", run_dir=current)
        view = jobs.view(state.store().get_run(current))
        if view.state == "done" and (current / "labels.csv").exists():
            if st.button("Review the flagged images of this run", type="primary", key="train_to_review",
                         icon=":material/rate_review:"):
                state.set_run(current)
                st.switch_page("views/review.py")
