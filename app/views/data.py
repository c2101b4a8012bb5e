"""1 · Data: open a dataset, see how much the experts agree, browse the images with their votes."""

import streamlit as st

from app import state
from app.components import dataset as ds
from app.components import summary
from app.components.browser import image_browser
from app.components.errors import guard
from app.components.picker import dataset_picker
from app.plain import code, md

st.title("Data")
dataset = state.dataset()

with st.expander("Open a dataset" if dataset is None else "Open another dataset", expanded=dataset is None,
                 icon=":material/folder_open:"):
    dataset_picker(key="data_open")

if dataset is None:
    st.info("Open a dataset to start: the demo dataset, a folder holding **votes.csv** and the images, or a zip of "
            "such a folder. votes.csv has one row per image (column `image`) and one column per expert.",
            icon=":material/arrow_upward:")
    st.stop()

st.subheader(md(ds.display_name(dataset)))
st.caption(code(dataset))
if ds.is_demo(dataset):
    st.warning("**SYNTHETIC demo data.** These images and votes are simulated to show how the tool works; "
               "they are not real patients and support no clinical conclusion.", icon=":material/science:")

with guard("read the dataset"):
    rep = ds.report(dataset)
    table = ds.table(dataset)
    agg = ds.agg(dataset)
    summary.metrics_row(rep)
    summary.class_order(key="data_classes", dataset=dataset, classes=rep["classes"])
    n_warn = len(rep["warnings"])
    tab_images, tab_agreement, tab_warnings = st.tabs(
        ["Images", "Agreement", f"Warnings ({n_warn})" if n_warn else "Warnings"])
    with tab_images:
        image_browser(table, agg, key="data_browse")
    with tab_agreement:
        left, right = st.columns(2, gap="large")
        with left:
            st.markdown("**Class balance**")
            summary.class_balance(rep)
        with right:
            st.markdown("**Pairwise agreement (Cohen's κ)**")
            summary.kappa_table(rep)
        st.markdown("**Per-expert agreement**")
        summary.experts_table(rep)
    with tab_warnings:
        summary.warnings_list(rep)
    st.page_link("views/meta.py", label="Next: choose the meta set", icon=":material/arrow_forward:")
