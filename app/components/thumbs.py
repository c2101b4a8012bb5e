"""Thumbnails (engine load_rgb + Pillow, cached on path + mtime), a pager and a thumbnail grid."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import streamlit as st


@st.cache_data(max_entries=4000, show_spinner=False)
def _thumbnail(path: str, mtime: float, size: int) -> bytes | None:
    """JPEG bytes of the image scaled to fit size x size (None when unreadable). DICOMs are windowed by the engine."""
    from PIL import Image

    from engine.data.images import load_rgb

    try:
        img = Image.fromarray(load_rgb(path))
    except Exception:  # unreadable image: the grid shows a placeholder; inspect reports the reason
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def thumbnail(path: Path | str, size: int = 192) -> bytes | None:
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return _thumbnail(str(path), mtime, size)


@st.cache_data(max_entries=64, show_spinner=False)
def _full_image(path: str, mtime: float) -> bytes | None:
    from PIL import Image

    from engine.data.images import load_rgb

    try:
        img = Image.fromarray(load_rgb(path))
    except Exception:
        return None
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def full_image(path: Path | str) -> bytes | None:
    """PNG bytes of the whole image (for the review page), or None when unreadable."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return _full_image(str(path), mtime)


def pager(n_items: int, *, key: str, page_size: int = 24, label: str = "images") -> slice:
    """Page selector over n_items; owns st.session_state[key] (the 1-based page). Returns the slice to show."""
    pages = max(1, math.ceil(n_items / page_size))
    if st.session_state.get(key, 1) > pages or key not in st.session_state:
        st.session_state[key] = 1
    cols = st.columns([1, 1, 4], vertical_alignment="center")
    with cols[0]:
        page = int(st.number_input("Page", min_value=1, max_value=pages, step=1, key=key))
    start = (page - 1) * page_size
    stop = min(n_items, start + page_size)
    with cols[1]:
        st.caption(f"of {pages}")
    with cols[2]:
        st.caption(f"Showing {start + 1 if n_items else 0}–{stop} of {n_items} {label}")
    return slice(start, stop)


def grid(
    items: Sequence[dict],
    *,
    key: str,
    columns: int = 6,
    size: int = 192,
    below: Callable[[dict], None] | None = None,
) -> None:
    """Thumbnails in rows of `columns`. Each item: {"path", "caption"}; `below(item)` may add widgets under it."""
    for row_start in range(0, len(items), columns):
        cols = st.columns(columns)
        for col, item in zip(cols, items[row_start : row_start + columns], strict=False):
            with col:
                data = thumbnail(item["path"], size)
                if data is None:
                    st.warning("unreadable image", icon=":material/broken_image:")
                else:
                    st.image(data, width="stretch")
                if item.get("caption"):
                    st.caption(item["caption"])
                if below is not None:
                    below(item)
