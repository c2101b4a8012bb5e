"""Cached access to a dataset through the engine (read_votes, aggregate, inspect_dataset), keyed on votes.csv mtime."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from app import state


def _mtime(dataset: Path | str) -> float:
    try:
        return os.stat(Path(dataset) / "votes.csv").st_mtime
    except OSError:
        return 0.0


ROP_ORDER = ("normal", "pre-plus", "plus")  # least to most severe: a tied vote resolves toward the later class


@st.cache_data(max_entries=8, show_spinner="Reading votes.csv and checking every image…")
def _table(dataset: str, mtime: float, classes: tuple[str, ...] | None, check_images: bool = True):
    from engine.data.votes import read_votes

    return read_votes(dataset, classes=list(classes) if classes else None, check_images=check_images)


@st.cache_data(max_entries=8, show_spinner=False)
def _agg(dataset: str, mtime: float, classes: tuple[str, ...] | None) -> pd.DataFrame:
    from engine.data.aggregate import aggregate

    return aggregate(_table(dataset, mtime, classes))


@st.cache_data(max_entries=8, show_spinner="Computing agreement statistics…")
def _report(dataset: str, mtime: float, classes: tuple[str, ...] | None) -> dict:
    from engine.data.report import inspect_dataset

    return inspect_dataset(dataset, classes=list(classes) if classes else None)


def _settings_file(dataset: Path | str) -> Path:
    import hashlib

    ds = Path(dataset).resolve()
    return state.ws_dir("settings") / f"{ds.name}-{hashlib.sha256(str(ds).encode()).hexdigest()[:8]}.json"


def classes_for(dataset: Path | str) -> tuple[str, ...] | None:
    """The class order used for this dataset: the one saved in the app, else the ROP order when the classes are
    exactly normal/pre-plus/plus, else None (the engine's default: sorted values seen)."""
    import json

    try:
        saved = json.loads(_settings_file(dataset).read_text(encoding="utf-8")).get("classes")
    except (OSError, ValueError):
        saved = None
    if saved:
        return tuple(saved)
    from engine.errors import InputError

    try:
        seen = _table(str(dataset), _mtime(dataset), None, False).classes
    except InputError:
        return None  # the full read (with image checks) then reports every problem at once
    return ROP_ORDER if set(seen) == set(ROP_ORDER) else None


def set_classes(dataset: Path | str, classes: list[str]) -> None:
    """Remember a class order for the dataset (validated by engine read_votes first: it raises InputError)."""
    from engine import atomic

    _table(str(dataset), _mtime(dataset), tuple(classes), False)
    atomic.write_json(_settings_file(dataset), {"dataset": str(Path(dataset).resolve()), "classes": list(classes)})


def table(dataset: Path | str):
    """engine VoteTable (raises engine InputError on bad input)."""
    return _table(str(dataset), _mtime(dataset), classes_for(dataset))


def agg(dataset: Path | str) -> pd.DataFrame:
    """engine aggregate(table): image, votes, majority, tie, consensus, n_graders, agreement."""
    return _agg(str(dataset), _mtime(dataset), classes_for(dataset))


def report(dataset: Path | str) -> dict:
    """engine inspect_dataset(dataset, classes=...)."""
    return _report(str(dataset), _mtime(dataset), classes_for(dataset))


def is_demo(dataset: Path | str | None) -> bool:
    """The SYNTHETIC demo dataset: engine generate_demo marks its README.md."""
    if dataset is None:
        return False
    from engine.data.demo import README_MARKER

    try:
        return README_MARKER in (Path(dataset) / "README.md").read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return False


def demo_dir() -> Path:
    return state.ws_dir("datasets") / "demo"


def ensure_demo() -> Path:
    """The demo dataset in the workspace, generated once by the engine (engine.data.demo.generate_demo)."""
    from engine.data.demo import generate_demo

    target = demo_dir()
    if not (target / "votes.csv").exists():
        state.log.info("generating the demo dataset in %s", target)
        generate_demo(target, n=400, seed=0)
    return target


def open_dataset(path: Path | str) -> Path:
    """Validate (engine read_votes raises InputError listing every problem), record in the store, select it."""
    path = Path(path).expanduser().resolve()
    from engine.errors import InputError, Problem

    if not path.is_dir():
        raise InputError(Problem(str(path), "is not a folder", "give the folder that holds votes.csv"))
    if not (path / "votes.csv").is_file():
        raise InputError(Problem(str(path), "has no votes.csv",
                                 "votes.csv lists one image per row (column image) and one column per expert"))
    table(path)  # validation happens here
    state.store().open_dataset(path, name=("demo (synthetic)" if is_demo(path) else None))
    state.set_dataset(path)
    return path


def display_name(dataset: Path | str) -> str:
    name = Path(dataset).name
    return f"{name} (SYNTHETIC demo)" if is_demo(dataset) else name


def roles_file(dataset: Path | str) -> Path:
    """Where the app writes the dataset's saved meta/test roles (passed to training with --roles)."""
    ds = Path(dataset).resolve()
    import hashlib

    digest = hashlib.sha256(str(ds).encode()).hexdigest()[:8]
    return state.ws_dir("roles") / f"{ds.name}-{digest}.csv"
