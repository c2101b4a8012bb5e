"""Verified labels: a clinician's review decisions given to a new run with `--reviewed REVIEWED.csv`.

Two formats are accepted (the columns decide which):
  - the export (`python -m engine export` / the app's Export page): `image, final_label, source, ...`; only its rows
    with `source=review` are verified labels (the rest are consensus, majority or model labels, not decisions);
    `reviewer`, `reviewed_at` and `note` are kept when present;
  - plain `image,label` (any other columns are ignored).

What a verified label does in a run (`apply_reviewed`, argued in docs/ARCHITECTURE.md, "Closing the loop"):
  - it is the image's training target (every method's warm-up and hard targets, the label methods start from);
  - it is a *known* label in the label estimate (engine/estimate.py): the posterior is one-hot on it, and it
    anchors every expert's confusion matrix, like the meta set's labels do;
  - the image keeps its role: a reviewed training image stays a training image; the meta and test sets, their
    size and what their accuracies mean do not change, so a run and its retrain are compared on the same sets.
The run writes the labels it was given to `RUNDIR/reviewed.csv` and marks those rows `verified=1` in labels.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine import atomic
from engine.csv_cells import restore
from engine.data import schema as S
from engine.errors import InputError, Problem

LABEL = "label"  # the plain format's label column
COLUMNS = [S.IMAGE, LABEL, S.REVIEWER, S.REVIEWED_AT, S.NOTE]  # RUNDIR/reviewed.csv and read_reviewed's frame
REVIEW_SOURCE = "review"


def read_reviewed(path: Path | str, *, images, classes: list[str]) -> pd.DataFrame:
    """Verified labels of `path` as a frame with `COLUMNS` (one row per image, file order).

    `images`: the dataset's image names (votes.csv `image`); `classes`: the run's classes. Every problem is reported
    at once (file, 1-based data row, what is wrong, how to fix it): unknown image, unknown or empty label, an image
    given two different labels. An image listed twice with the same label counts once."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise InputError(Problem(where, "reviewed-labels file not found",
                                 "pass the CSV the Export page or `python -m engine export` wrote, or a CSV image,label"))
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise InputError(Problem(where, f"not a readable CSV ({type(err).__name__}: {err})",
                                 "save the file as UTF-8 CSV")) from None
    raw = raw.map(restore).rename(columns=lambda c: restore(str(c)).strip())
    if {S.IMAGE, S.FINAL_LABEL, S.SOURCE} <= set(raw.columns):
        label_col = S.FINAL_LABEL
        rows = [i for i, s in enumerate(raw[S.SOURCE]) if s.strip() == REVIEW_SOURCE]
    elif {S.IMAGE, LABEL} <= set(raw.columns):
        label_col = LABEL
        rows = list(range(len(raw)))
    else:
        raise InputError(Problem(where, f"columns {', '.join(raw.columns) or '(none)'} are neither an export "
                                 "(image, final_label, source) nor image,label",
                                 "pass the export CSV or a CSV with the columns image,label"))
    known_images, known_classes = set(images), list(classes)
    problems: list[Problem] = []
    out: dict[str, dict] = {}
    first_row: dict[str, int] = {}
    for i in rows:
        rec, row = raw.iloc[i], i + 1
        image, label = str(rec[S.IMAGE]).strip(), str(rec[label_col]).strip()
        if not image:
            problems.append(Problem(where, "image is empty", "give the image path as in votes.csv", row=row))
            continue
        if image not in known_images:
            problems.append(Problem(where, f"image '{image}' is not in the dataset's votes.csv",
                                    "use the image paths of votes.csv (relative to the dataset folder)", row=row))
            continue
        if label not in known_classes:
            what = "label is empty" if not label else f"label '{label}' is not one of the classes"
            problems.append(Problem(where, f"{what} ({', '.join(known_classes)})",
                                    "give one of the run's classes (--classes)", row=row))
            continue
        if image in out and out[image][LABEL] != label:
            problems.append(Problem(where, f"image '{image}' is labelled '{label}' here but '{out[image][LABEL]}' at "
                                    f"row {first_row[image]}", "keep one label per image", row=row))
            continue
        first_row.setdefault(image, row)
        out[image] = {S.IMAGE: image, LABEL: label, **{c: str(rec[c]) if c in raw.columns else ""
                                                        for c in (S.REVIEWER, S.REVIEWED_AT, S.NOTE)}}
    if problems:
        raise InputError(problems)
    return pd.DataFrame(list(out.values()), columns=COLUMNS)


def verified_labels(reviewed: pd.DataFrame, images, classes: list[str]) -> np.ndarray:
    """(N,) class index of each image's verified label, -1 where it has none (N = len(images), in that order)."""
    index = {c: k for k, c in enumerate(classes)}
    by_image = dict(zip(reviewed[S.IMAGE], reviewed[LABEL], strict=True))
    return np.array([index[by_image[i]] if i in by_image else -1 for i in images], dtype=int)


def apply_reviewed(frame: pd.DataFrame, verified: np.ndarray) -> dict:
    """Make verified labels the run's labels of their images: `frame["_major_idx"]` (the meta/test label, the label
    flags compare with) and `frame["_target_idx"]` (the training target) become the verified class where there is
    one — except the target of a role=unlabeled image, which stays out of training whatever its label (it belongs to
    a patient whose other images are in the meta set). Returns counts for metrics.json: verified images per role and
    how many differ from the experts' majority."""
    verified = np.asarray(verified, int)
    has = verified >= 0
    before = frame["_major_idx"].to_numpy().copy()
    roles = frame[S.ROLE].to_numpy()
    frame.loc[has, "_major_idx"] = verified[has]
    if "_target_idx" in frame:
        trained = has & (roles != S.UNLABELED)
        frame.loc[trained, "_target_idx"] = verified[trained]
    return {"n_verified": int(has.sum()),
            "by_role": {r: int((has & (roles == r)).sum()) for r in S.ROLES},
            "changed_from_majority": int((has & (verified != before)).sum())}


def pin_verified(shares: np.ndarray, verified: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Vote-share training targets (N, K) with the rows of verified, trained images (verified ≥ 0 and target ≥ 0)
    replaced by a one-hot row of the verified class: a reviewer's label, not the experts' split."""
    shares = np.array(shares, dtype=np.float32, copy=True)
    pin = (np.asarray(verified) >= 0) & (np.asarray(targets) >= 0)
    shares[pin] = np.eye(shares.shape[1], dtype=np.float32)[np.asarray(verified)[pin]]
    return shares


def write_reviewed(path: Path | str, reviewed: pd.DataFrame) -> None:
    """The run's copy of its verified labels (provenance for the export of the retrained run)."""
    atomic.write_csv(path, reviewed[COLUMNS])


def read_run_reviewed(path: Path | str) -> pd.DataFrame:
    """A run's own `reviewed.csv` (written by `write_reviewed`), or an empty frame when the run has none."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    return frame.map(restore)


def load_for_run(path: str, frame: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame | None, dict]:
    """`--reviewed` in a run: read and check the file (before anything is written), store each row's verified class
    in `frame["_verified"]` (-1 = none) and make it the run's label (`apply_reviewed`). Returns (the verified labels
    or None without --reviewed, counts for metrics.json)."""
    if not path:
        frame["_verified"] = -1
        return None, {}
    reviewed = read_reviewed(path, images=frame[S.IMAGE], classes=classes)
    verified = verified_labels(reviewed, frame[S.IMAGE], classes)
    frame["_verified"] = verified
    return reviewed, apply_reviewed(frame, verified)
