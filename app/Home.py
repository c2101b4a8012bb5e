"""ROP label review app: `streamlit run app/Home.py [-- --dataset PATH --run RUNDIR --workspace DIR]`.

The entry script is the frame around every page: page config, navigation, the sidebar context.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # streamlit puts app/ on sys.path; the app and the engine are imported from the root
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from app import state  # noqa: E402
from app.components import sidebar  # noqa: E402
from app.plain import code, md  # noqa: E402

st.set_page_config(page_title="ROP label review", page_icon="👁️", layout="wide")

PAGES = Path(__file__).resolve().parent / "views"  # not "pages/": that name turns on the legacy multipage mode
pages = {
    "": [st.Page(PAGES / "overview.py", title="Overview", icon=":material/home:", default=True)],
    "Workflow": [
        st.Page(PAGES / "data.py", title="1 · Data", icon=":material/folder_open:", url_path="data"),
        st.Page(PAGES / "meta.py", title="2 · Meta set", icon=":material/fact_check:", url_path="meta"),
        st.Page(PAGES / "train.py", title="3 · Train", icon=":material/model_training:", url_path="train"),
        st.Page(PAGES / "review.py", title="4 · Review", icon=":material/rate_review:", url_path="review"),
        st.Page(PAGES / "export.py", title="5 · Export", icon=":material/download:", url_path="export"),
    ],
    "Use the model": [
        st.Page(PAGES / "predict.py", title="Predict", icon=":material/online_prediction:", url_path="predict"),
    ],
}

state.init_session()
page = st.navigation(pages, position="sidebar", expanded=True)
sidebar.context(key="sidebar")
try:
    page.run()
except Exception as exc:  # the last safety net: a message on the page, the traceback in WORKSPACE/app.log
    state.log.exception("page %s failed", page.title)
    st.error(f"Something went wrong on this page: {type(exc).__name__}: {md(exc)}\n\n"
             f"The details are in {code(state.workspace() / 'app.log')}.", icon=":material/error:")
