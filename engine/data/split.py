"""Meta/test/train split: meta and test drawn from consensus images, stratified by class, grouped by patient.

Rules (also printed by `python -m engine split --help`):
- Sizes: a value >= 1 is a count, 0 < value < 1 a fraction of the consensus images (rounded half up).
- Scaling: the ROP study put 200 meta + 300 test = 500 of its 622 consensus images (80.4%) aside. When the
  requested meta + test exceed that share (500/622) of the consensus images, both are scaled down in proportion:
  with the defaults this gives meta = round(n_consensus * 200/622), test = round(n_consensus * 300/622).
- Sizes are totals: rows preset to meta/test in votes.csv count towards them, only the remainder is drawn.
- Stratified: each class gets meta/test images in proportion to its consensus images (largest remainder), and
  every class that has an eligible consensus image gets at least one meta image (when meta > 0), even if this
  makes meta slightly larger than asked.
- Grouped: a patient (`patient_id`; empty = the image is its own group) goes to meta or test whole, and only when
  all its images are consensus images with no preset role; otherwise its labelled images go to train.
  Unset rows of a patient that has a preset meta/test/train row take that role (the patient stays in one set).
- Rows with a preset role keep it; other graded rows -> train; rows nobody graded -> unlabeled.
- Deterministic: groups are sorted by key, then shuffled with numpy's default_rng(seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine import atomic
from engine.data import schema as S
from engine.data.votes import (
    VOTES_FILE,
    duplicate_image_problem,
    image_key,
    normalise_image,
    parse_csv,
    patient_straddle_problems,
    read_csv_text,
    rows_text,
)
from engine.errors import InputError, Problem, Warning_

if TYPE_CHECKING:
    from engine.data.votes import VoteTable

ROP_META, ROP_TEST, ROP_CONSENSUS = 200, 300, 622  # sizes in the ROP study
MAX_HELD_OUT = (ROP_META + ROP_TEST) / ROP_CONSENSUS  # share of consensus images meta+test may take (~0.804)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def resolve_size(value: float, n_consensus: int, what: str = "size") -> int:
    """A count (>= 1) or a fraction of `n_consensus` (0 < value < 1) -> a count. Negative -> InputError."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InputError(
            Problem(
                f"--{what}",
                f"must be a count >= 0 or a fraction < 1, got {value:g}",
                fix=f"e.g. --{what} 200 or --{what} 0.3",
            )
        )
    if value < 1:
        return _round_half_up(value * n_consensus)
    return _round_half_up(value)


def split_sizes(meta: float, test: float, n_consensus: int) -> tuple[int, int]:
    """Requested meta/test sizes (counts or fractions) -> counts, scaled down when they exceed MAX_HELD_OUT."""
    m = resolve_size(meta, n_consensus, "meta")
    t = resolve_size(test, n_consensus, "test")
    cap = n_consensus * MAX_HELD_OUT
    if m + t > cap:
        factor = cap / (m + t)
        m, t = _round_half_up(m * factor), _round_half_up(t * factor)
    return m, t


def largest_remainder(total: int, weights: Sequence[int]) -> np.ndarray:
    """Split integer `total` in proportion to `weights` (K,) -> (K,) ints summing to `total` (0s if no weight)."""
    w = np.asarray(weights, dtype=float)
    if total <= 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    rest = total - int(out.sum())
    order = np.lexsort((np.arange(len(w)), -(exact - out)))  # largest remainder first, then class order
    out[order[:rest]] += 1
    return out


def _meta_quota(m: int, cons: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Meta images per class (K,): proportional to consensus counts, >= 1 for classes with eligible images."""
    q = largest_remainder(m, cons)
    if m <= 0:
        return q
    for c in np.flatnonzero((eligible > 0) & (q == 0)):
        q[c] = 1
        donors = np.flatnonzero(q > 1)
        if len(donors):  # keep the total when another class can spare one
            q[donors[np.argmax(q[donors])]] -= 1
    return q


def make_split(
    table: VoteTable, agg: pd.DataFrame, *, meta: float = ROP_META, test: float = ROP_TEST, seed: int = 0
) -> pd.Series:
    """Roles (meta|test|train|unlabeled) as a Series named 'role' aligned with `table.frame` (see module rules).

    `agg` is `aggregate(table)`. `result.attrs` holds "sizes" (requested, used, scaled) and "warnings" (list[str]).
    """
    frame = table.frame
    n = len(frame)
    classes = list(table.classes)
    k = len(classes)
    cls_index = {c: i for i, c in enumerate(classes)}
    preset = frame[S.ROLE].to_numpy(dtype=object)
    graded = agg[S.N_GRADERS].to_numpy() > 0
    consensus = agg[S.CONSENSUS].to_numpy(dtype=bool)
    label = np.array([cls_index.get(c, -1) for c in agg[S.MAJORITY]], dtype=np.int64)
    name = str(table.votes_file)

    problems = patient_straddle_problems(
        list(frame[S.PATIENT_ID]), list(preset), [table.row_number(i) for i in range(n)], name
    )
    if problems:
        raise InputError(problems)

    roles = np.where(preset != "", preset, np.where(graded, S.TRAIN, S.UNLABELED)).astype(object)

    # groups: one per patient, or per image without patient_id
    keys = [pid if pid else f"\x00{img}" for pid, img in zip(frame[S.PATIENT_ID], frame[S.IMAGE], strict=True)]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)

    eligible: list[tuple[str, np.ndarray, np.ndarray]] = []  # (key, rows, class counts (K,))
    for key, rows in groups.items():
        rows_a = np.asarray(rows)
        set_roles = {preset[i] for i in rows if preset[i] in (S.META, S.TEST, S.TRAIN)}
        if set_roles:  # a patient with a preset role: its unset graded rows follow it
            (role,) = set_roles
            for i in rows:
                if preset[i] == "" and graded[i]:
                    roles[i] = role
            continue
        if all(preset[i] == "" and consensus[i] for i in rows):
            eligible.append((key, rows_a, np.bincount(label[rows_a], minlength=k)))

    n_cons = int(consensus.sum())
    m, t = split_sizes(meta, test, n_cons)
    cons_per_class = np.bincount(label[consensus], minlength=k) if k else np.zeros(0, dtype=np.int64)
    elig_per_class = sum((v for _, _, v in eligible), start=np.zeros(k, dtype=np.int64))
    preset_meta = np.bincount(label[(preset == S.META) & (label >= 0)], minlength=k)
    preset_test = np.bincount(label[(preset == S.TEST) & (label >= 0)], minlength=k)

    meta_q = _meta_quota(m, cons_per_class, elig_per_class)
    meta_need = np.minimum(np.maximum(meta_q - preset_meta, 0), elig_per_class)
    test_q = largest_remainder(t, cons_per_class)
    test_need = np.minimum(np.maximum(test_q - preset_test, 0), elig_per_class - meta_need)

    rng = np.random.default_rng(seed)
    eligible.sort(key=lambda g: g[0])
    order = rng.permutation(len(eligible))
    assigned: dict[int, str] = {}
    for gi in order:
        v = eligible[gi][2]
        if v.sum() and np.all(v <= meta_need):
            assigned[gi], meta_need = S.META, meta_need - v
        elif v.sum() and np.all(v <= test_need):
            assigned[gi], test_need = S.TEST, test_need - v

    # every class with an eligible consensus image gets >= 1 meta image, even if a group overshoots the quota
    if m > 0:
        for c in range(k):
            have = preset_meta[c] + sum(eligible[gi][2][c] for gi, r in assigned.items() if r == S.META)
            if have or not elig_per_class[c]:
                continue
            cands = [gi for gi in order if eligible[gi][2][c] and assigned.get(gi) != S.META]
            # prefer a group not yet in test, then the smallest
            best = min(cands, key=lambda gi: (assigned.get(gi) == S.TEST, len(eligible[gi][1])))
            assigned[best] = S.META

    for gi, role in assigned.items():
        roles[eligible[gi][1]] = role

    out = pd.Series(roles, index=frame.index, name=S.ROLE, dtype=object)
    notes = []
    for c in range(k):
        if cons_per_class[c] and not ((out.to_numpy() == S.META) & (label == c)).any():
            notes.append(
                f"class '{classes[c]}' has consensus images but none could go to meta (their patients have "
                "non-consensus or preset images)"
                if m > 0
                else f"class '{classes[c]}' has no meta image (meta = 0)"
            )
    n_elig = int(elig_per_class.sum())
    for role, target in ((S.META, m), (S.TEST, t)):
        got = int((out == role).sum())
        if got < target:
            notes.append(
                f"{role} has {got} images, fewer than the target {target}: only {n_elig} consensus images belong to "
                "patients whose images are all consensus (a patient is never split across sets)"
            )
    requested_meta, requested_test = float(meta), float(test)
    out.attrs["sizes"] = {
        "n_consensus": n_cons,
        "requested": {"meta": requested_meta, "test": requested_test},
        "target": {"meta": m, "test": t},
        "scaled": (m, t) != (resolve_size(meta, n_cons, "meta"), resolve_size(test, n_cons, "test")),
        "actual": {r: int((out == r).sum()) for r in S.ROLES},
    }
    out.attrs["warnings"] = notes
    return out


def role_counts(roles: pd.Series, agg: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Rows = roles, columns = majority classes (+ '(none)' for ungraded) and 'total'; counts of images."""
    maj = agg[S.MAJORITY].replace("", "(none)")
    cols = [*classes, "(none)"]
    tab = pd.crosstab(
        pd.Categorical(roles, categories=list(S.ROLES)), pd.Categorical(maj, categories=cols), dropna=False
    )
    tab.index.name, tab.columns.name = "role", "majority"
    if not (maj == "(none)").any():
        tab = tab.drop(columns="(none)")
    tab["total"] = tab.sum(axis=1)
    return tab


def write_roles(path: Path | str, images: Sequence[str], roles: Sequence[str]) -> Path:
    """Write the roles file (columns image, role) atomically. Refuses a file named votes.csv."""
    path = Path(path)
    if path.name == VOTES_FILE:
        raise InputError(
            Problem(
                str(path),
                "refusing to overwrite a votes.csv with roles",
                fix="write the roles to another file, e.g. roles.csv",
            )
        )
    images, roles = list(images), list(roles)
    if len(images) != len(roles):
        raise ValueError(f"{len(images)} images but {len(roles)} roles")
    return atomic.write_csv(path, pd.DataFrame({S.IMAGE: images, S.ROLE: roles}))


def read_roles(path: Path | str, table: VoteTable) -> pd.Series:
    """Read a roles file (image, role; other columns ignored) -> Series 'role' aligned with `table.frame`.

    Raises one InputError for: missing file or columns, images not in votes.csv or missing from the file,
    duplicates, invalid or empty roles, meta/test for an image nobody graded, a patient in two sets.
    """
    path = Path(path)
    name = str(path)
    problems: list[Problem] = []
    if not path.is_file():
        raise InputError(Problem(name, "roles file not found", fix="give the file written by `python -m engine split`"))
    text = read_csv_text(path, problems, [])
    if text is None:
        raise InputError(problems)
    header, records = parse_csv(text, name, problems)
    if not header:
        raise InputError(problems)
    missing = [c for c in (S.IMAGE, S.ROLE) if c not in header]
    if missing:
        raise InputError(
            Problem(
                name,
                f"has no {' or '.join(repr(c) for c in missing)} column",
                fix="the roles file needs the columns image,role",
            )
        )
    ci, cr = header.index(S.IMAGE), header.index(S.ROLE)

    position = {image_key(img): i for i, img in enumerate(table.frame[S.IMAGE])}
    graded = (table.votes_matrix() >= 0).any(axis=1)
    roles = np.full(len(table.frame), "", dtype=object)
    file_row = np.zeros(len(table.frame), dtype=np.int64)
    seen: dict[str, int] = {}
    for rownum, rec in records:
        if not any(f.strip() for f in rec):
            continue
        rec = rec + [""] * (len(header) - len(rec))
        rel = normalise_image(rec[ci])
        role = rec[cr].strip().lower()
        key = image_key(rel)
        if key in seen:
            problems.append(duplicate_image_problem(name, rel, seen[key], rownum))
            continue
        seen[key] = rownum
        if key not in position:
            problems.append(
                Problem(
                    name,
                    f"image '{rel}' is not in {VOTES_FILE}",
                    fix=f"remove the row or add the image to {VOTES_FILE}",
                    row=rownum,
                )
            )
            continue
        i = position[key]
        file_row[i] = rownum
        if role not in S.ROLES:
            what = "role is empty" if not role else f"role '{rec[cr].strip()}' is not one of {', '.join(S.ROLES)}"
            problems.append(Problem(name, what, fix=f"use one of {', '.join(S.ROLES)}", row=rownum))
            continue
        if role in (S.META, S.TEST) and not graded[i]:
            problems.append(
                Problem(
                    name,
                    f"image '{rel}' has role '{role}' but no expert graded it",
                    fix="make it train/unlabeled or grade it",
                    row=rownum,
                )
            )
        roles[i] = role
    absent = [i for i in range(len(roles)) if not file_row[i]]
    if absent:
        listed = ", ".join(f"'{table.frame[S.IMAGE].iat[i]}'" for i in absent[:8])
        more = f" and {len(absent) - 8} more" if len(absent) > 8 else ""
        problems.append(
            Problem(
                name,
                f"{len(absent)} image(s) of {VOTES_FILE} are missing ({listed}{more}; {VOTES_FILE} {rows_text([table.row_number(i) for i in absent])})",
                fix="give every image of votes.csv a role (re-run `python -m engine split`)",
            )
        )
    present = file_row > 0
    problems.extend(
        patient_straddle_problems(
            list(table.frame[S.PATIENT_ID][present]), list(roles[present]), list(file_row[present]), name
        )
    )
    if problems:
        raise InputError(problems)
    return pd.Series(roles, index=table.frame.index, name=S.ROLE, dtype=object)


def split_warnings(roles: pd.Series, table: VoteTable) -> list[Warning_]:
    """make_split's notes as Warning_ objects (for the CLI and the app)."""
    return [Warning_(str(table.votes_file), msg) for msg in roles.attrs.get("warnings", [])]
