"""App-wide state: command-line options, the workspace folder, the shared store, logging, session slots.

Everything here is cheap to import (no torch, no engine modules that pull heavy dependencies).

Session-state slots owned by this module (one name each, documented once):
    "dataset"  - str, the open dataset folder (absolute path)
    "run"      - str, the selected run folder (absolute path)
    "reviewer" - str, the reviewer's name, asked once per session
Components own their own slots, named after their `key`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import streamlit as st

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `streamlit run app/Home.py` puts app/ on sys.path, not the repo root
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_WORKSPACE = REPO_ROOT / "data" / "workspace"
ENV_WORKSPACE = "ROP_WORKSPACE"
ENV_DATASET = "ROP_DATASET"
ENV_RUN = "ROP_RUN"

DATASET, RUN, REVIEWER = "dataset", "run", "reviewer"

log = logging.getLogger("rop.app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options after `--` in `streamlit run app/Home.py -- --dataset PATH --run RUNDIR --workspace DIR`.

    Unknown arguments are ignored (under pytest, sys.argv holds pytest's own options).
    """
    p = argparse.ArgumentParser(prog="app/Home.py", add_help=False, allow_abbrev=False)
    p.add_argument("--dataset", default=os.environ.get(ENV_DATASET, ""))
    p.add_argument("--run", default=os.environ.get(ENV_RUN, ""))
    p.add_argument("--workspace", default="")
    args, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


def workspace() -> Path:
    """The workspace folder: --workspace, else $ROP_WORKSPACE, else data/workspace in the repository."""
    args = parse_args()
    ws = args.workspace or os.environ.get(ENV_WORKSPACE, "") or str(DEFAULT_WORKSPACE)
    path = Path(ws).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    _setup_logging(path)
    return path


def ws_dir(name: str) -> Path:
    """A sub-folder of the workspace: datasets, roles, runs."""
    path = workspace() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


_handler: logging.Handler | None = None


def _setup_logging(ws: Path) -> None:
    """Errors and actions go to WORKSPACE/app.log (the handler follows the workspace; tests switch it)."""
    global _handler
    target = str(ws / "app.log")
    if _handler is not None and getattr(_handler, "baseFilename", None) == target:
        return
    if _handler is not None:
        log.removeHandler(_handler)
        _handler.close()
    _handler = logging.FileHandler(target, encoding="utf-8")
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


@st.cache_resource(show_spinner=False)
def _store_for(db_path: str):
    from engine.store import WorkspaceStore

    return WorkspaceStore(db_path)


def store():
    """The shared workspace store (SQLite in the workspace), one handle per workspace for all sessions."""
    return _store_for(str(workspace() / "review.db"))


def init_session() -> None:
    """Fill the session slots on the first run of a session: from the command line, else the dataset opened last
    (so a browser refresh or an app restart comes back to where the user was)."""
    if st.session_state.get("_initialised"):
        return
    st.session_state["_initialised"] = True
    args = parse_args()
    if args.dataset and DATASET not in st.session_state:
        st.session_state[DATASET] = str(Path(args.dataset).expanduser().resolve())
        if Path(st.session_state[DATASET]).is_dir():
            store().open_dataset(st.session_state[DATASET])
    if args.run and RUN not in st.session_state:
        st.session_state[RUN] = str(Path(args.run).expanduser().resolve())
        from app import jobs

        jobs.register_external_run(Path(st.session_state[RUN]), dataset())
    if DATASET not in st.session_state:
        recent = [d for d in store().list_datasets() if Path(d["path"]).is_dir()]
        if recent:
            st.session_state[DATASET] = recent[0]["path"]
    if RUN not in st.session_state and DATASET in st.session_state:
        finished = [r["run_dir"] for r in store().list_runs(dataset=st.session_state[DATASET])
                    if (Path(r["run_dir"]) / "labels.csv").is_file()]
        if finished:
            st.session_state[RUN] = finished[0]


def _path(key: str) -> Path | None:
    value = st.session_state.get(key)
    return Path(value) if value else None


def dataset() -> Path | None:
    return _path(DATASET)


def set_dataset(path: Path | str | None) -> None:
    if path is None:
        st.session_state.pop(DATASET, None)
        return
    new = str(Path(path).resolve())
    if st.session_state.get(DATASET) != new:
        st.session_state[DATASET] = new
        log.info("dataset opened: %s", new)


def run_dir() -> Path | None:
    return _path(RUN)


def set_run(path: Path | str | None) -> None:
    if path is None:
        st.session_state.pop(RUN, None)
    else:
        st.session_state[RUN] = str(Path(path).resolve())
