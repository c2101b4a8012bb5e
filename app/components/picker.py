"""Open a dataset: a folder on the server, an uploaded zip, the demo dataset, or a recently opened one."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state
from app.components import dataset as ds
from app.components.errors import guard
from app.plain import md


def _opened(path: Path) -> None:
    st.toast(f"Opened {md(ds.display_name(path))}", icon=":material/check_circle:")
    st.rerun()


def folder_form(*, key: str, label: str, placeholder: str, help: str, button: str) -> str:  # noqa: A002
    """A folder path typed on this computer, submitted with `button`: the path (stripped) once submitted, else "".
    Owns st.session_state[key] (the text) and the form f"{key}_form"."""
    with st.form(f"{key}_form", border=False):
        text = st.text_input(label, key=key, placeholder=placeholder, help=help)
        submitted = st.form_submit_button(button, icon=":material/folder_open:")
    return text.strip() if submitted else ""


def dataset_picker(*, key: str) -> None:
    """Owns st.session_state[f"{key}_*"]. On success sets the session's dataset and reruns."""
    recent = [d for d in state.store().list_datasets() if Path(d["path"]).is_dir()]
    tab_demo, tab_path, tab_zip, tab_recent = st.tabs(
        ["Demo dataset", "Folder on this computer", "Upload a zip", f"Recent ({len(recent)})"])
    with tab_demo:
        st.markdown("A **synthetic** ROP-like dataset: 400 fundus-like images, three simulated experts who disagree "
                    "on borderline images, a few DICOMs. Nothing in it is a real patient.")
        exists = (ds.demo_dir() / "votes.csv").exists()
        if st.button("Open the demo dataset", key=f"{key}_demo", type="primary", icon=":material/science:"):
            with guard("open the demo dataset"):
                spinner = "Opening the demo dataset…" if exists else "Generating the synthetic demo dataset (about 30 s)…"
                with st.spinner(spinner):
                    path = ds.open_dataset(ds.ensure_demo())
                _opened(path)
    with tab_path:
        text = folder_form(key=f"{key}_path", label="Dataset folder (on the machine running this app)",
                           placeholder="/data/rop/study1", help="the folder that holds votes.csv and the images",
                           button="Open folder")
        if text:
            with guard("open the dataset"):
                path = ds.open_dataset(text)
                _opened(path)
    with tab_zip:
        st.caption("A zip of the dataset folder: votes.csv, the images (PNG, JPEG, TIFF, BMP, DICOM) and optionally a "
                   "README. Anything else is refused, and so are paths that point outside the folder.")
        upload = st.file_uploader("Dataset zip", type=["zip"], key=f"{key}_zip")
        if upload is not None and st.button("Unpack and open", key=f"{key}_unzip", icon=":material/unarchive:"):
            with guard("open the uploaded zip"):
                from app.components.upload import extract_dataset_zip

                with st.spinner("Unpacking and checking every image…"):
                    path = extract_dataset_zip(upload.getvalue(), upload.name, state.ws_dir("datasets"))
                    path = ds.open_dataset(path)
                _opened(path)
    with tab_recent:
        if not recent:
            st.caption("Datasets you open appear here.")
        else:
            labels = {d["path"]: f"{d['name']} — {d['path']}" for d in recent}
            choice = st.selectbox("Recently opened", list(labels), format_func=labels.get, key=f"{key}_recent")
            if st.button("Open", key=f"{key}_recent_open"):
                with guard("open the dataset"):
                    _opened(ds.open_dataset(choice))
