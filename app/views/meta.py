"""2 · Meta set: the small, trusted set the meta-learning methods learn soft labels from, and the test set."""

import streamlit as st

from app import state
from app.components.errors import guard
from app.components.meta_editor import meta_set_editor

st.title("Meta set")
st.caption("The meta set is a small set of images whose label you trust (all graders agree). Methods such as mslg "
           "use it to learn how much to believe each noisy vote; the test set measures the final model.")
dataset = state.dataset()
if dataset is None:
    st.info("Open a dataset on the Data page first.", icon=":material/folder_open:")
    st.page_link("views/data.py", label="Go to Data", icon=":material/arrow_forward:")
    st.stop()

with guard("edit the meta set"):
    meta_set_editor(key="meta", dataset=dataset)
st.page_link("views/train.py", label="Next: train a model", icon=":material/arrow_forward:")
