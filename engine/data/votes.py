"""Read and validate `DATASET/votes.csv` (one row per image, one column per expert), reporting every problem at once.

Row numbers in messages are 1-based **data** rows: the header is not counted, so data row N is line N+1 of the
file (row N+1 in a spreadsheet). Blank lines are skipped but still counted, so numbers match the file.

Encoding: the file must be UTF-8. A UTF-8 byte-order mark (what Excel's "CSV UTF-8" writes) is accepted and
stripped, with a warning; a UTF-16/UTF-32 BOM or bytes that are not UTF-8 are an error that says what to save as.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine.csv_cells import restore
from engine.data import schema as S
from engine.errors import InputError, Problem, Warning_, rows_text

VOTES_FILE = "votes.csv"
UTF8_BOM = b"\xef\xbb\xbf"
# longest first: the UTF-32 LE mark starts with the UTF-16 LE one
_OTHER_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
SAVE_AS_UTF8 = "save the file as UTF-8 (in Excel: File > Save As > 'CSV UTF-8 (Comma delimited)')"
# cell values people type for "not graded"; they are not classes, the cell should be empty
_NA_LIKE = {"na", "n/a", "nan", "none", "null", "-", "?", "missing"}
# characters that would make the `votes` string ("expert=class;expert=class") or --classes ambiguous
_BAD_EXPERT_CHARS = "=;"
_BAD_CLASS_CHARS = ",;"


@dataclass
class VoteTable:
    """A validated votes.csv. `frame` has columns image, role, patient_id, note, <experts...> (all str, "" = empty).

    `image` is the canonical relative path ('/' separators, no './'); `rows[i]` is the 1-based data row of
    `frame.iloc[i]` in votes.csv (for messages); `frame` has a RangeIndex.
    """

    root: Path
    frame: pd.DataFrame
    experts: list[str]
    classes: list[str]
    warnings: list[Warning_] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def votes_file(self) -> Path:
        return self.root / VOTES_FILE

    def votes_matrix(self) -> np.ndarray:
        """Grades as class indices, shape (N, E) int64; -1 = not graded. Columns follow `experts`."""
        index = {c: k for k, c in enumerate(self.classes)}
        out = np.full((len(self.frame), len(self.experts)), -1, dtype=np.int64)
        for j, expert in enumerate(self.experts):
            out[:, j] = [index.get(v, -1) for v in self.frame[expert]]
        return out

    def image_paths(self) -> list[Path]:
        """Absolute-ish paths (root / image) of every row, in frame order."""
        return [self.root / rel for rel in self.frame[S.IMAGE]]

    def row_number(self, i: int) -> int:
        """1-based votes.csv data row of frame position `i`."""
        return self.rows[i] if self.rows else i + 1


# ---------------------------------------------------------------------------------------------------------------
# small shared helpers (also used by split.read_roles)


def parse_classes(classes: str | Sequence[str] | None, problems: list[Problem] | None = None) -> list[str] | None:
    """`"normal,pre-plus,plus"` or a list -> list of names (None if not given). Bad lists add to `problems`."""
    if classes is None:
        return None
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    items = [str(c).strip() for c in items]
    if not any(items):
        return None
    sink: list[Problem] = [] if problems is None else problems
    given = ",".join(items)
    if any(not c for c in items):
        sink.append(
            Problem("--classes", f"'{given}' has an empty class name", fix="e.g. --classes normal,pre-plus,plus")
        )
    dupes = sorted({c for c in items if c and items.count(c) > 1})
    if dupes:
        sink.append(
            Problem("--classes", f"class {', '.join(map(repr, dupes))} is listed twice", fix="list each class once")
        )
    for c in items:
        if any(ch in c for ch in _BAD_CLASS_CHARS):
            sink.append(Problem("--classes", f"class '{c}' contains ',' or ';'", fix="rename the class"))
    items = [c for c in dict.fromkeys(items) if c]
    if len(items) < 2:
        sink.append(
            Problem("--classes", f"'{given}' names fewer than two classes", fix="e.g. --classes normal,pre-plus,plus")
        )
    if problems is None and sink:
        raise InputError(sink)
    return items


def read_csv_text(path: Path, problems: list[Problem], warnings: list[Warning_]) -> str | None:
    """The file decoded as UTF-8 (a UTF-8 BOM stripped, with a warning), or None after adding a Problem."""
    name = str(path)
    data = path.read_bytes()
    if data.startswith(UTF8_BOM):
        warnings.append(
            Warning_(
                name,
                "starts with a UTF-8 byte-order mark (BOM); it was read as UTF-8 and the mark ignored "
                "(to silence this, save as UTF-8 without BOM)",
            )
        )
        data = data[len(UTF8_BOM) :]
    else:
        for bom, enc in _OTHER_BOMS:
            if data.startswith(bom):
                problems.append(
                    Problem(name, f"is saved as {enc} (it starts with a {enc} byte-order mark)", fix=SAVE_AS_UTF8)
                )
                return None
    if b"\x00" in data:
        problems.append(
            Problem(name, "contains NUL bytes: it is probably UTF-16 without a byte-order mark", fix=SAVE_AS_UTF8)
        )
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    bad_lines = []
    for lineno, line in enumerate(data.split(b"\n")):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.append(lineno)  # line 0 is the header, so line n is data row n
    guess = "Windows-1252 / Latin-1"
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        guess = "Latin-1 or another legacy encoding"
    where = "the header" if bad_lines == [0] else rows_text([n for n in bad_lines if n > 0] or [0])
    problems.append(
        Problem(name, f"is not UTF-8 (it looks like {guess}); bytes that are not UTF-8 in {where}", fix=SAVE_AS_UTF8)
    )
    return None


def parse_csv(text: str, name: str, problems: list[Problem]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (stripped) and `(data_row, fields)` records. Separator: ',' unless the header only has ';' or tabs."""
    first = text.split("\n", 1)[0]
    delimiter = ","
    if "," not in first and ";" in first:
        delimiter = ";"
    elif "," not in first and "\t" in first:
        delimiter = "\t"
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as err:  # e.g. an unterminated quote
        problems.append(Problem(name, f"is not a readable CSV file ({err})", fix="check the quotes in the file"))
        return [], []
    if not records or not any(f.strip() for f in records[0]):
        problems.append(
            Problem(name, "is empty (no header line)", fix="the first line must name the columns, e.g. image,dr_a,dr_b")
        )
        return [], []
    # a CSV this tool wrote (a roles file) has formula-like cells neutralised with a leading "'": undo that
    records = [[restore(f) for f in rec] for rec in records]
    header = [h.strip() for h in records[0]]
    return header, [(i, rec) for i, rec in enumerate(records[1:], start=1)]


def normalise_image(value: str) -> str:
    """The image path as typed, stripped, backslashes turned into '/' (Windows paths); see also image_key."""
    return value.strip().replace("\\", "/")


def image_key(rel: str) -> str:
    """Canonical relative path ('./a.png' -> 'a.png', 'x/../a.png' -> 'a.png'): what VoteTable.frame stores and
    what duplicates and roles files are matched on."""
    return posixpath.normpath(rel) if rel else rel


def duplicate_image_problem(name: str, rel: str, first_row: int, row: int, fix: str = "keep one row per image"):
    """The problem for an image listed again in a CSV (votes.csv or a roles file). The text names the first row
    only, so an image listed in many rows groups into one problem naming them all (`group_problems`)."""
    return Problem(name, f"image '{rel}' is listed again (first at row {first_row})", fix=fix, row=row)


def path_problem(root: Path, rel: str) -> str | None:
    """Why `rel` (relative image path) is refused as outside the dataset folder, or None when it is inside."""
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        return f"image '{rel}' is an absolute path; paths must be relative to the dataset folder"
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        return f"image '{rel}' is outside the dataset folder"
    full = root / norm
    if os.path.lexists(full):  # resolve symlinks (of the file or of a folder on the way) and check where they land
        try:
            target = full.resolve()
        except (OSError, RuntimeError):
            return f"image '{rel}' is a looping symbolic link"
        if not target.is_relative_to(root.resolve()):
            return f"image '{rel}' is a symbolic link to a file outside the dataset folder"
    return None


def _file_problem(root: Path, rel: str, verify) -> tuple[str, str] | None:
    """(problem, fix) for a missing or unreadable image file, else None."""
    full = root / image_key(rel)
    if not full.exists():
        hint = ""
        parent = full.parent
        if parent.is_dir():
            same = [p.name for p in parent.iterdir() if p.name.lower() == full.name.lower()]
            if same:
                hint = f" (there is '{same[0]}': paths are case-sensitive)"
        return (
            f"image file '{rel}' not found{hint}",
            "check the path (relative to the dataset folder) or remove the row",
        )
    if full.is_dir():
        return f"image '{rel}' is a folder, not a file", "give the path of an image file"
    reason = verify(full)
    if reason:
        return f"image '{rel}': {reason}", "replace the file with a readable image (re-export it) or remove the row"
    return None


# ---------------------------------------------------------------------------------------------------------------


# Known grading scales in order of severity: used when --classes is not given (ties resolve toward the later class).
KNOWN_SCALES = (
    ("normal", "pre-plus", "plus"),  # ROP plus disease (ICROP)
    ("no_dr", "mild", "moderate", "severe", "proliferative"),  # diabetic retinopathy grades
)


def _known_order(values) -> list[str] | None:
    values = set(values)
    for scale in KNOWN_SCALES:
        if values and values <= set(scale):
            return [c for c in scale if c in values]
    return None


def is_severity_scale(classes) -> bool:
    """The classes, in this order, are (part of) a known severity scale with at least 3 grades (ordinal)."""
    classes = list(classes)
    return len(classes) >= 3 and any(set(classes) <= set(scale) and classes == [c for c in scale if c in classes]
                                     for scale in KNOWN_SCALES)


def default_class_order(values) -> list[str]:
    """Class order without --classes: a known severity scale (ROP: normal, pre-plus, plus) if the values fit one,
    else sorted."""
    return _known_order(values) or sorted(values)


def read_votes(
    dataset: Path | str, *, classes: str | Sequence[str] | None = None,
    check_images: bool | Callable[[Path], str | None] = True,
) -> VoteTable:
    """Read DATASET/votes.csv into a VoteTable; raise one InputError listing every problem found.

    `classes` fixes the class order (ties resolve toward the later class); default: a known severity scale
    (`KNOWN_SCALES`, e.g. normal, pre-plus, plus) when the values fit one, else sorted values seen.
    `check_images=False` skips opening image files (paths are still refused when they leave the folder); a callable
    `verify(path) -> None | reason` replaces `engine.data.images.verify` (the pipeline's trusts cached images).
    """
    root = Path(dataset)
    vfile = root / VOTES_FILE
    name = str(vfile)
    problems: list[Problem] = []
    warnings: list[Warning_] = []
    wanted = parse_classes(classes, problems)

    if not root.is_dir():
        raise InputError(
            [Problem(str(root), "dataset folder not found", fix="give the folder that holds votes.csv"), *problems]
        )
    if not vfile.is_file():
        raise InputError(
            [Problem(name, "not found", fix="put a votes.csv (image,<expert>,...) in the dataset folder"), *problems]
        )
    text = read_csv_text(vfile, problems, warnings)
    if text is None:
        raise InputError(problems)
    header, records = parse_csv(text, name, problems)
    if not header:
        raise InputError(problems)

    # ---- header -------------------------------------------------------------------------------------------
    columns: dict[str, int] = {}
    for j, col in enumerate(header):
        if not col:
            if any(j < len(rec) and rec[j].strip() for _, rec in records):
                problems.append(
                    Problem(
                        name,
                        f"column {j + 1} has values but no name in the header",
                        fix="name the column (an expert's name) or delete it",
                    )
                )
            continue  # an unnamed empty column (trailing comma from a spreadsheet) is ignored
        if col in columns:
            problems.append(
                Problem(name, f"column '{col}' appears twice in the header", fix="give every column a different name")
            )
            continue
        lower = col.lower()
        if lower in S.RESERVED_INPUT_COLUMNS and col != lower:
            problems.append(
                Problem(
                    name,
                    f"column '{col}' looks like '{lower}' but reserved column names are lowercase",
                    fix=f"rename it to '{lower}'",
                )
            )
            continue
        columns[col] = j
    experts = [c for c in columns if c not in S.RESERVED_INPUT_COLUMNS]
    for e in experts:
        if any(ch in e for ch in _BAD_EXPERT_CHARS):
            problems.append(
                Problem(
                    name,
                    f"expert column '{e}' contains '=' or ';'",
                    fix="rename the column (these characters separate the votes string)",
                )
            )
    if S.IMAGE not in columns:
        problems.append(
            Problem(
                name,
                "has no 'image' column",
                fix="add a column named 'image' holding each image's path relative to the dataset folder",
            )
        )
        raise InputError(problems)
    if not experts:
        problems.append(
            Problem(
                name,
                "has no expert column",
                fix="add one column per expert (column name = expert, value = class; empty = not graded)",
            )
        )

    # ---- rows ---------------------------------------------------------------------------------------------
    verify = check_images if callable(check_images) else None
    if check_images is True:
        from engine.data.images import verify  # lazy: pulls in Pillow / pydicom

    width = len(header)
    out_rows: list[dict[str, str]] = []
    row_numbers: list[int] = []
    seen: dict[str, int] = {}
    class_rows: dict[str, list[int]] = {}
    for rownum, rec in records:
        if not any(f.strip() for f in rec):
            continue  # blank line
        if len(rec) > width and any(f.strip() for f in rec[width:]):
            problems.append(
                Problem(
                    name,
                    f"has {len(rec)} fields but the header has {width}",
                    fix="remove the extra values or quote values that contain the separator",
                    row=rownum,
                )
            )
        rec = (rec + [""] * width)[:width]
        values = {col: rec[j].strip() for col, j in columns.items()}
        rel = normalise_image(values[S.IMAGE])
        role = values.get(S.ROLE, "").lower()
        row = {
            S.IMAGE: image_key(rel),
            S.ROLE: role,
            S.PATIENT_ID: values.get(S.PATIENT_ID, ""),
            S.NOTE: values.get(S.NOTE, ""),
        }
        row.update({e: values[e] for e in experts})

        if not rel:
            problems.append(
                Problem(
                    name,
                    "image is empty",
                    fix="give the image path relative to the dataset folder, or delete the row",
                    row=rownum,
                )
            )
        else:
            key = image_key(rel)
            if key in seen:
                problems.append(duplicate_image_problem(name, rel, seen[key], rownum,
                                                        "keep one row per image (merge the grades into it)"))
            else:
                seen[key] = rownum
            outside = path_problem(root, rel)
            if outside:
                problems.append(
                    Problem(
                        name,
                        outside,
                        fix="put the image inside the dataset folder and give its relative path",
                        row=rownum,
                    )
                )
            elif verify is not None:
                bad = _file_problem(root, rel, verify)
                if bad:
                    problems.append(Problem(name, bad[0], fix=bad[1], row=rownum))
        if role and role not in S.ROLES:
            problems.append(
                Problem(
                    name,
                    f"role '{values.get(S.ROLE)}' is not one of {', '.join(S.ROLES)} (or empty)",
                    fix="use one of these or leave it empty (the engine decides)",
                    row=rownum,
                )
            )
        graded = [row[e] for e in experts if row[e]]
        for v in graded:
            class_rows.setdefault(v, []).append(rownum)
        if role in (S.META, S.TEST) and not graded:
            problems.append(
                Problem(
                    name,
                    f"role '{role}' but no expert graded this image",
                    fix="grade it or set its role to unlabeled",
                    row=rownum,
                )
            )
        out_rows.append(row)
        row_numbers.append(rownum)

    if not out_rows and not problems:
        problems.append(Problem(name, "has no data rows", fix="add one row per image below the header"))

    # ---- classes ------------------------------------------------------------------------------------------
    for v, rws in class_rows.items():
        if any(ch in v for ch in _BAD_CLASS_CHARS):
            problems.append(
                Problem(name, f"class '{v}' contains ',' or ';' ({rows_text(rws)})", fix="rename the class", row=rws[0])
            )
    if wanted is not None:
        for v, rws in class_rows.items():
            if v in wanted:
                continue
            fix = "fix the value or add the class to --classes"
            if v.lower() in _NA_LIKE:
                fix = "leave the cell empty for 'not graded'"
            elif any(v.lower() == c.lower() for c in wanted):
                fix = "class names are case-sensitive: " + fix
            also = f" (also {rows_text(rws[1:])})" if len(rws) > 1 else ""
            problems.append(
                Problem(name, f"class '{v}' is not in --classes {','.join(wanted)}{also}", fix=fix, row=rws[0])
            )
        class_list = list(wanted)
        for c in class_list:
            if c not in class_rows:
                warnings.append(Warning_(name, f"class '{c}' is in --classes but no expert used it"))
    else:
        problems.extend(_case_variant_problems(class_rows, name))
        class_list = default_class_order(class_rows)
        if out_rows and experts and not class_list:
            problems.append(
                Problem(name, "no expert graded any image", fix="fill in the expert columns (value = class name)")
            )
        elif len(class_list) == 1:
            warnings.append(
                Warning_(name, f"only one class is used ('{class_list[0]}'); a classifier needs at least two")
            )
        if len(class_list) > 1 and class_list != _known_order(class_rows):
            warnings.append(
                Warning_(
                    name,
                    f"no --classes given: class order is sorted ({', '.join(class_list)}); ties resolve toward the "
                    "later class, so pass --classes in order of severity (e.g. normal,pre-plus,plus)",
                )
            )

    # ---- preset roles: one patient never straddles meta/test/train --------------------------------------------
    problems.extend(
        patient_straddle_problems([r[S.PATIENT_ID] for r in out_rows], [r[S.ROLE] for r in out_rows], row_numbers, name)
    )

    if problems:
        raise InputError(problems)

    if S.PATIENT_ID in columns:
        no_patient = [n for r, n in zip(out_rows, row_numbers, strict=True) if not r[S.PATIENT_ID]]
        if no_patient:
            k = len(no_patient)
            warnings.append(
                Warning_(
                    name,
                    f"{k} image{'s have' if k > 1 else ' has'} an empty patient_id ({rows_text(no_patient)}): each "
                    "counts as a patient of its own, so it can land in another set (meta/test/train) than the same "
                    "patient's other images; fill in patient_id",
                )
            )
    frame = pd.DataFrame(out_rows, columns=[*S.RESERVED_INPUT_COLUMNS, *experts], dtype=str)
    table = VoteTable(root=root, frame=frame, experts=experts, classes=class_list, warnings=warnings, rows=row_numbers)
    warnings.extend(_data_warnings(table))
    return table


def _case_variant_problems(class_rows: dict[str, list[int]], name: str) -> list[Problem]:
    """One Problem per set of class values that differ only in upper/lower case ('Plus' and 'plus'): without
    --classes they would silently become separate classes."""
    by_lower: dict[str, list[str]] = {}
    for value in class_rows:
        by_lower.setdefault(value.lower(), []).append(value)
    out = []
    for variants in by_lower.values():
        if len(variants) > 1:
            spelled = " and ".join(f"'{v}' ({rows_text(class_rows[v])})" for v in sorted(variants))
            out.append(
                Problem(
                    name,
                    f"class values {spelled} differ only in upper/lower case and would become "
                    f"{len(variants)} different classes",
                    fix="write the class the same way in every cell, or pass --classes with the spelling to use "
                    "(then the other spellings are reported row by row)",
                    row=min(class_rows[v][0] for v in variants),
                )
            )
    return out


def patient_straddle_problems(
    patients: Sequence[str], roles: Sequence[str], rows: Sequence[int], name: str
) -> list[Problem]:
    """One Problem per patient whose rows carry more than one of meta/test/train."""
    by_patient: dict[str, dict[str, list[int]]] = {}
    for pid, role, rownum in zip(patients, roles, rows, strict=True):
        if pid and role in (S.META, S.TEST, S.TRAIN):
            by_patient.setdefault(pid, {}).setdefault(role, []).append(rownum)
    out = []
    for pid, roles_of in by_patient.items():
        if len(roles_of) > 1:
            parts = " and ".join(f"{r} ({rows_text(rw)})" for r, rw in roles_of.items())
            first = min(min(rw) for rw in roles_of.values())
            out.append(
                Problem(
                    name,
                    f"patient {pid} is in both {parts}",
                    fix="give all images of one patient the same role",
                    row=first,
                )
            )
    return out


def _data_warnings(table: VoteTable) -> list[Warning_]:
    """Non-fatal remarks: experts with no grades, single-grader images, classes without a consensus image."""
    from engine.data.aggregate import MajorityVote

    name = str(table.votes_file)
    votes = table.votes_matrix()
    out = []
    for j, e in enumerate(table.experts):
        if not (votes[:, j] >= 0).any():
            out.append(Warning_(name, f"expert '{e}' graded no images"))
    if not len(votes) or not table.classes:
        return out
    mv = MajorityVote().fit(votes, table.n_classes)
    single = [table.row_number(i) for i in np.flatnonzero(mv.n_graders_ == 1)]
    if single:
        n = len(single)
        out.append(
            Warning_(
                name,
                f"{n} image{'s' if n > 1 else ''} graded by one expert only ({rows_text(single)}): "
                "their label is one opinion and never counts as consensus",
            )
        )
    for k, c in enumerate(table.classes):
        if not (mv.consensus_ & (mv.labels_ == k)).any():
            out.append(
                Warning_(
                    name,
                    f"class '{c}' has no consensus image (graded by at least two experts who all agree), so it gets "
                    "no meta or test images",
                )
            )
    return out
