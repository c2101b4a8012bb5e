"""Predict new images with a finished run's model: uploaded files, a zip of images or a folder on this computer,
through `python -m engine predict` in a subprocess (the app never imports torch).

Each request gets its own folder WORKSPACE/predictions/<time>-<run>/ holding the uploaded images (input/) and the
engine's `predictions.csv` (image, p:<class>..., predicted, confidence). Owns st.session_state[f"{key}_*"]; the
last result is st.session_state[f"{key}_result"] = {"folder", "csv", "run", "root"}.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path, PurePath

import pandas as pd
import streamlit as st

from app import state

PREDICTIONS = "predictions.csv"
TIMEOUT_S = 1800  # a few thousand images on a CPU


def request_folder(run: Path) -> Path:
    """A new folder for one prediction request."""
    base = state.ws_dir("predictions") / f"{time.strftime('%Y%m%d-%H%M%S')}-{run.name}"
    folder = base
    while folder.exists():
        folder = folder.with_name(folder.name + "b")
    (folder / "input").mkdir(parents=True)
    return folder


def save_uploads(files: list, target: Path) -> list[Path]:
    """Write uploaded files into `target` under their base names (no folders from the browser, numbered when two
    share a name); returns the paths written."""
    written: list[Path] = []
    for f in files:
        name = PurePath(f.name.replace("\\", "/")).name or "image"
        stem, suffix = os.path.splitext(name)
        path, n = target / name, 1
        while path.exists():
            n += 1
            path = target / f"{stem}-{n}{suffix}"
        path.write_bytes(f.getvalue())
        written.append(path)
    return written


def engine_predict(run: Path, inputs: list[str], out_csv: Path, *, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m engine predict RUN INPUTS... --out OUT_CSV` run in `cwd` (so relative inputs give relative image
    names in the CSV)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(state.REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "engine", "predict", str(run), *inputs, "--out", str(out_csv)]
    state.log.info("predict: %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


def predict(key: str, run: Path, *, uploads: list | None = None, archive=None, folder: str = "") -> None:
    """Run one request (uploaded files, an uploaded zip of images, or a folder on this computer) and keep its result
    in the session (shown by `results`); failures become an error slot. A refused zip raises InputError."""
    st.session_state.pop(f"{key}_result", None)
    st.session_state.pop(f"{key}_failed", None)
    request = request_folder(run)
    if uploads or archive is not None:
        if archive is not None:
            from app.components.upload import extract_images_zip

            try:
                extract_images_zip(archive.getvalue(), archive.name, request / "input")
            except BaseException:
                shutil.rmtree(request, ignore_errors=True)
                raise
        else:
            save_uploads(uploads, request / "input")
        inputs, cwd, root = ["input"], request, request
    else:
        source = Path(folder).expanduser()
        inputs, cwd, root = [str(source.resolve())], request, source.resolve()
    with st.spinner("Predicting (loading the model and the images)…"):
        proc = engine_predict(run, inputs, request / PREDICTIONS, cwd=cwd)
    if proc.returncode != 0 or not (request / PREDICTIONS).is_file():
        state.log.warning("predict failed (%s): %s", proc.returncode, proc.stderr[-2000:])
        st.session_state[f"{key}_failed"] = (proc.stderr or proc.stdout or f"exit code {proc.returncode}").strip()
        return
    st.session_state[f"{key}_result"] = {"folder": str(request), "csv": str(request / PREDICTIONS), "run": str(run),
                                         "root": str(root)}


def image_path(result: dict, image: str) -> Path:
    """Where a predicted image is: relative names are relative to the request folder."""
    path = Path(image)
    return path if path.is_absolute() else Path(result["folder"]) / path


def results(key: str) -> None:
    """The last request's predictions: counts per class, a table, the CSV as a download, thumbnails."""
    failed = st.session_state.get(f"{key}_failed")
    if failed:
        st.error("The engine could not predict these images:", icon=":material/error:")
        st.code(failed[-4000:], language=None)
        return
    result = st.session_state.get(f"{key}_result")
    if not result or not Path(result["csv"]).is_file():
        return
    csv_path = Path(result["csv"])
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    numbers = [c for c in frame.columns if c.startswith("p:")] + ["confidence"]
    frame[numbers] = frame[numbers].apply(pd.to_numeric, errors="coerce")
    shown = frame.assign(image=[_display_name(result, i) for i in frame["image"]])
    counts = frame["predicted"].value_counts()
    st.success(f"Predicted {len(frame)} image{'s' if len(frame) != 1 else ''}.", icon=":material/task_alt:")
    st.dataframe(pd.DataFrame({"predicted": counts.index, "images": counts.to_numpy()}), hide_index=True,
                 width="content")
    st.dataframe(shown, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(shown)),
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in numbers})
    st.download_button("Download predictions (CSV)", data=csv_path.read_bytes(),
                       file_name=f"predictions-{Path(result['run']).name}.csv", mime="text/csv",
                       key=f"{key}_download", icon=":material/file_download:")
    st.caption(f"Also saved in `{csv_path}`.")
    from app.components import thumbs

    items = [{"path": str(image_path(result, i)), "label": f"{name}\n{p} ({c:.2f})"}
             for i, name, p, c in zip(frame["image"][:24], shown["image"][:24], frame["predicted"][:24],
                                      frame["confidence"][:24], strict=True)]
    thumbs.grid(items, key=f"{key}_grid", columns=6, below=lambda item: st.text(item["label"]))  # names as text


def _display_name(result: dict, image: str) -> str:
    """The image name as the user knows it: relative to the uploaded files or to the chosen folder."""
    path = Path(image)
    for base in (Path(result["folder"]) / "input", Path(result["root"])):
        try:
            return str(image_path(result, image).relative_to(base))
        except ValueError:
            continue
    return str(path)
