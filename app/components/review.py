"""The review queue: flagged images of a run's labels.csv, one at a time, each action one audit row in the store.

Session slots (key = "rv" on the Review page): f"{key}_current" (image shown), f"{key}_shown" (the image the
note field belongs to), f"{key}_note", f"{key}_msg", f"{key}_trail" (images seen before, for Previous),
f"{key}_zoom", f"{key}_fx", f"{key}_fy", the filters f"{key}_f_*", and for the two tables ("list", "hist")
f"{key}_{name}_images" (the images of their rows as drawn) and f"{key}_nonce" (part of their keys: a new nonce
draws them without a selection).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from app import state
from app.components import thumbs
from app.plain import code, md
from engine.data.aggregate import parse_votes
from engine.data.schema import parse_bool


def reason_codes(cell: str) -> list[str]:
    """The machine-readable reasons of a row: labels.csv `flag_code`, ';'-joined, the first the primary one. The
    words in `flag_reason` are for people and never parsed (runs older than the codes have none: [])."""
    return [c.strip() for c in str(cell or "").split(";") if c.strip()]


def reason_label(code_: str) -> str:
    """A reason code's short label for people (engine.flags.FLAG_CODES; an unknown code shows as itself)."""
    from engine.flags import FLAG_CODES

    return FLAG_CODES.get(code_, code_)


@st.cache_data(max_entries=8, show_spinner=False)
def _labels(path: str, mtime: float) -> tuple[pd.DataFrame, list[str]]:
    from engine.export import read_labels

    return read_labels(path)


def load_labels(run_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """engine.export.read_labels(RUNDIR/labels.csv): validated frame of strings + classes (cached on mtime)."""
    path = Path(run_dir) / "labels.csv"
    return _labels(str(path), os.stat(path).st_mtime)


def queue(labels: pd.DataFrame) -> pd.DataFrame:
    """Flagged rows (flag == 1) in the engine's review order: highest `priority` first (ties keep file order).
    Adds `_score` (flag_score as a number) and `_reasons` (the row's reason codes)."""
    flagged = labels[labels["flag"].map(parse_bool).eq(True)].copy()
    flagged["_score"] = pd.to_numeric(flagged["flag_score"], errors="coerce").fillna(0.0)
    flagged["_priority"] = pd.to_numeric(flagged["priority"], errors="coerce").fillna(flagged["_score"])
    flagged["_order"] = range(len(flagged))
    flagged = flagged.sort_values(["_priority", "_order"], ascending=[False, True], kind="stable")
    flagged["_reasons"] = flagged["flag_code"].map(reason_codes)
    return flagged.drop(columns=["_order", "_priority"]).reset_index(drop=True)


def dataset_root(run_dir: Path) -> Path | None:
    """The dataset folder a run was trained on (config.json data.dataset), to find the images."""
    from engine.rundir import RunDir

    config = RunDir(run_dir).read_config() or {}
    data = config.get("data")
    root = data.get("dataset") if isinstance(data, dict) else None
    if root:
        return Path(root)
    record = state.store().get_run(run_dir)
    return Path(record["dataset"]) if record and record.get("dataset") else state.dataset()


# ------------------------------------------------------------------------------------------------------ actions
ACTION_TEXT = {"accept_suggestion": "accepted the suggestion", "keep_majority": "kept the majority",
               "choose_class": "chose", "skip": "skipped"}


def saved_text(action: str, new_label: str | None, image: str) -> str:
    """The toast after an action, e.g. "Saved: you chose plus for P001_L.png" (names escaped for Markdown)."""
    name = md(Path(image).name)
    if action == "skip":
        return f"Saved: you skipped {name}; it stays in the queue."
    what = f"chose {md(new_label)}" if action == "choose_class" else f"{ACTION_TEXT[action]} ({md(new_label)})"
    return f"Saved: you {what} for {name}."


def decide(key: str, run_dir: str, image: str, action: str, new_label: str | None, old_label: str | None,
           next_image: str | None) -> None:
    """Button callback: exactly one add_decision row, then advance to next_image."""
    reviewer = st.session_state.get(state.REVIEWER, "")
    note = st.session_state.get(f"{key}_note", "") or ""
    try:
        state.store().add_decision(run_dir, image, reviewer=reviewer, new_label=new_label, old_label=old_label,
                                   action=action, note=note.strip())
    except Exception as exc:  # shown on the page after the rerun; the traceback goes to app.log
        state.log.exception("could not record decision on %s", image)
        st.session_state[f"{key}_msg"] = ("error", f"The decision was NOT recorded: {md(exc)}")
        return
    state.log.info("decision %s on %s by %s: %s -> %s", action, image, reviewer, old_label, new_label)
    st.session_state[f"{key}_msg"] = ("ok", saved_text(action, new_label, image))
    st.session_state[f"{key}_note"] = ""
    st.session_state.setdefault(f"{key}_trail", []).append(image)
    st.session_state[f"{key}_current"] = next_image
    st.session_state[f"{key}_zoom"] = 1.0


def filters_changed(key: str) -> None:
    """on_change of a filter: show the first image of the newly filtered list (the page picks it)."""
    st.session_state.pop(f"{key}_current", None)


def table_key(key: str, name: str) -> str:
    """The widget key of the "list" or "hist" table: it changes after each pick, so the table comes back unselected
    and picking the same row again is a new pick."""
    return f"{key}_{name}_{st.session_state.get(f'{key}_nonce', 0)}"


def take_selection(key: str) -> None:
    """Go to the image of a row picked in a table during the previous run. Called at the top of the page, before
    any widget is drawn: moving there sets the zoom, which Streamlit refuses once the zoom slider exists."""
    for name in ("list", "hist"):
        picked = st.session_state.get(table_key(key, name)) or {}
        rows = list((picked.get("selection") or {}).get("rows") or [])
        images = st.session_state.get(f"{key}_{name}_images") or []
        if rows and rows[0] < len(images):
            current = st.session_state.get(f"{key}_current")
            if images[rows[0]] != current:
                go_to(key, images[rows[0]], current)
            st.session_state[f"{key}_nonce"] = st.session_state.get(f"{key}_nonce", 0) + 1
            return


def pending_note(history: pd.DataFrame, image: str) -> str:
    """The note of the image's latest row when that row is a skip: it goes into the note field, so that it is
    saved with the decision eventually made (a skip is never the decision in force)."""
    if history.empty:
        return ""
    mine = history[history["image"] == image]
    if mine.empty or mine.iloc[-1]["action"] != "skip":
        return ""
    return str(mine.iloc[-1]["note"] or "")


def go_to(key: str, image: str | None, came_from: str | None = None) -> None:
    """Show `image`; `came_from` is remembered so that "Previous" leads back to it."""
    if came_from:
        st.session_state.setdefault(f"{key}_trail", []).append(came_from)
    st.session_state[f"{key}_current"] = image
    st.session_state[f"{key}_zoom"] = 1.0


def go_back(key: str, fallback: str | None) -> None:
    """Back to the image seen before (the one just decided, even if the filter now hides it), else `fallback`."""
    trail = st.session_state.get(f"{key}_trail") or []
    go_to(key, trail.pop() if trail else fallback)


# ------------------------------------------------------------------------------------------------------ display
def zoomed(png: bytes, zoom: float, fx: float, fy: float) -> bytes:
    """Crop around (fx, fy) (fractions of width/height) to 1/zoom of the image, scaled back up; PNG bytes."""
    if zoom <= 1.0:
        return png
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    w, h = img.size
    cw, ch = max(8, int(w / zoom)), max(8, int(h / zoom))
    left = int(min(max(fx * w - cw / 2, 0), w - cw))
    top = int(min(max(fy * h - ch / 2, 0), h - ch))
    crop = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    crop.save(buf, format="PNG")
    return buf.getvalue()


def image_view(key: str, path: Path) -> None:
    png = thumbs.full_image(path)
    if png is None:
        st.error(f"Cannot display {code(path.name)}: the file is missing or unreadable.")
        return
    zoom = st.select_slider("Zoom", options=[1.0, 1.5, 2.0, 3.0, 4.0], key=f"{key}_zoom",
                            format_func=lambda z: f"{z:g}×")
    fx, fy = 0.5, 0.5
    if zoom > 1.0:
        c1, c2 = st.columns(2)
        fx = c1.slider("Look left ↔ right", 0.0, 1.0, 0.5, 0.05, key=f"{key}_fx")
        fy = c2.slider("Look up ↕ down", 0.0, 1.0, 0.5, 0.05, key=f"{key}_fy")
    st.image(zoomed(png, zoom, fx, fy), width="stretch", caption=str(path.name))


def votes_frame(row: dict, majority: str) -> pd.DataFrame:
    votes = parse_votes(row.get("votes", ""))
    return pd.DataFrame({"expert": list(votes), "vote": list(votes.values()),
                         "agrees with majority": [v == majority for v in votes.values()]})


def soft_label_chart(row: dict, classes: list[str]) -> None:
    probs = []
    for c in classes:
        try:
            probs.append(float(row.get(f"p:{c}", "") or "nan"))
        except ValueError:
            probs.append(float("nan"))
    from app.components.charts import class_bars

    class_bars(pd.DataFrame({"class": classes, "probability": probs}), classes=classes, value="probability",
               title="soft label (probability)", fmt=".2f", height=40 + 34 * len(classes))


def keyboard_shortcuts(key: str, n_classes: int) -> None:
    """A keydown listener (st.html runs it in the page, not in an iframe) that clicks the action buttons.

    A accept suggestion · M keep majority · 1-9 choose a class · S skip · ← previous · → next.
    Ignored while typing in a field or with Ctrl/Alt/Meta held.
    """
    mapping = {"a": f"{key}_accept", "m": f"{key}_majority", "s": f"{key}_skip",
               "ArrowLeft": f"{key}_prev", "ArrowRight": f"{key}_next"}
    mapping.update({str(i + 1): f"{key}_class_{i}" for i in range(min(n_classes, 9))})
    entries = ",".join(f'"{k}":"st-key-{v}"' for k, v in mapping.items())
    st.html(
        "<script>(function(){"
        f"window.__ropKeys={{{entries}}};"
        "if(window.__ropKeysOn){return;}window.__ropKeysOn=true;"
        "document.addEventListener('keydown',function(e){"
        "if(e.ctrlKey||e.altKey||e.metaKey){return;}"
        "var t=e.target,tag=(t&&t.tagName||'').toLowerCase();"
        "if(tag==='input'||tag==='textarea'||tag==='select'||(t&&t.isContentEditable)){return;}"
        "var k=e.key.length===1?e.key.toLowerCase():e.key;var cls=(window.__ropKeys||{})[k];if(!cls){return;}"
        "var b=document.querySelector('.'+cls+' button');if(b&&!b.disabled){e.preventDefault();b.click();}"
        "});})();</script>",
        unsafe_allow_javascript=True,
    )
