"""Overview: the five steps and where this workspace stands in each."""

import streamlit as st

from app import state
from app.components import progress_steps

st.title("ROP label review")
st.markdown(
    "Several experts grade each image and often disagree. This tool trains a classifier that learns **soft labels** "
    "from a small, clinician-checked **meta set**, then lists the images whose label is most likely wrong so that you "
    "can review them, and exports one cleaned label per image with an audit trail."
)
progress_steps.steps(key="overview_steps", dataset=state.dataset(), run=state.run_dir())
if state.dataset() is None:
    st.info("**New here?** Open the demo dataset on the Data page: synthetic fundus-like images graded by three "
            "simulated experts, so you can try every step in a few minutes.", icon=":material/science:")
progress_steps.run_summary(key="overview_run", run=state.run_dir())
st.caption("Keyboard shortcuts on the Review page: A accept suggestion · M keep majority · 1–9 choose a class · "
           "S skip · ← previous image · → next image.")
