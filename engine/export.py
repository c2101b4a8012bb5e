"""Cleaned labels of a run: labels.csv merged with the clinicians' review decisions, one final label per image.

Rule for `final_label` / `source`, first match wins (expert labels are never silently replaced by unreviewed
model output):
1. `review`    — the image has a review decision (its latest non-skip decision): its `new_label`, with
                 `reviewer`, `reviewed_at` (the decision's UTC time) and `note`; or the run was given the image's
                 verified label with `--reviewed` (labels.csv `verified`=1): that label, with the reviewer, time and
                 note the run kept in RUNDIR/reviewed.csv. A decision in the store wins over a verified label.
2. `consensus` — graders agreed (`consensus` true): the `majority` label.
3. `majority`  — any other graded image, flagged or not: the experts' `majority` label is kept until a reviewer
                 decides otherwise (a flag is a question for a human, not an answer).
4. `model`     — nobody graded the image (no `majority`): the model's `suggested` label.
A row that matches none (no grader and no suggestion) makes labels.csv invalid.

Decisions come from `store` (a WorkspaceStore or a path to one); with `store=None` only from `RUNDIR/review.db`
when that file exists. When `out` is given the CSV is written atomically with a companion
`<out>.provenance.json` (run, method, time, counts by source, engine version, sha256 of labels.csv and of the
export, and the rule above).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from engine import __version__, atomic
from engine.csv_cells import restore
from engine.data import schema
from engine.data.cache import file_sha256
from engine.errors import InputError, Problem
from engine.rundir import LABELS, RunDir
from engine.store import WorkspaceStore

RUN_REVIEW_DB = "review.db"  # a run folder's own decision store, used when no store is passed
PROVENANCE_SUFFIX = ".provenance.json"
RULE = (
    "review: the latest non-skip review decision of the image (reviewer, reviewed_at, note from it); else the "
    "verified label the run was given with --reviewed (labels.csv verified=1; reviewer etc. from RUNDIR/reviewed.csv)",
    "consensus: graders agreed (consensus true) -> majority",
    "majority: graded but no consensus, flagged or not, not reviewed -> majority (experts are kept)",
    "model: nobody graded the image -> the model's suggested label",
)


def provenance_path(out: Path | str) -> Path:
    """Where the provenance JSON of an export lives: `<out>.provenance.json`."""
    out = Path(out)
    return out.with_name(out.name + PROVENANCE_SUFFIX)


def _fill_later_columns(frame: pd.DataFrame, classes: list[str]) -> None:
    """Runs written before the label-estimation stage lack flag_code, priority and method_p:<class>: no codes, the
    queue ordered by flag_score, and the method's view equal to p:<class>; runs before --reviewed lack `verified`
    (none is)."""
    if schema.FLAG_CODE not in frame.columns:
        frame[schema.FLAG_CODE] = ""
    if schema.VERIFIED not in frame.columns:
        frame[schema.VERIFIED] = "0"
    if schema.PRIORITY not in frame.columns and schema.FLAG_SCORE in frame.columns:
        frame[schema.PRIORITY] = frame[schema.FLAG_SCORE]
    for c in classes:
        if schema.method_prob_col(c) not in frame.columns and schema.prob_col(c) in frame.columns:
            frame[schema.method_prob_col(c)] = frame[schema.prob_col(c)]


def read_labels(path: Path | str) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate a run's labels.csv; returns (frame of strings, classes in p:-column order).

    Raises InputError listing every problem (file + 1-based data row)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise InputError(Problem(where, "labels.csv not found", "export a finished run folder (it writes labels.csv)"))
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise InputError(Problem(where, f"not a readable CSV ({type(err).__name__}: {err})")) from None
    frame = frame.map(restore).rename(columns=restore)  # the run wrote it with formula-like cells neutralised
    classes = [c[len(schema.PROB_PREFIX) :] for c in frame.columns if c.startswith(schema.PROB_PREFIX)]
    problems: list[Problem] = []
    if not classes or any(not c for c in classes):
        problems.append(Problem(where, "no class columns: expected p:<class> columns, one per class"))
    _fill_later_columns(frame, classes)
    missing = [c for c in schema.labels_columns(classes) if c not in frame.columns]
    if missing:
        problems.append(Problem(where, f"missing column(s) {', '.join(missing)}", "use the labels.csv a run wrote"))
    if problems:
        raise InputError(problems)

    known, seen = set(classes), {}
    for i, rec in enumerate(frame.to_dict("records")):
        row = i + 1

        def bad(msg: str, fix: str = "", row=row) -> None:
            problems.append(Problem(where, msg, fix, row))

        image = rec[schema.IMAGE].strip()
        if not image:
            bad("image is empty")
        elif image in seen:
            bad(f"image '{image}' appears twice (first at row {seen[image]})")
        else:
            seen[image] = row
        for col in (schema.MAJORITY, schema.SUGGESTED):
            if rec[col] and rec[col] not in known:
                bad(f"{col} '{rec[col]}' is not one of the classes {', '.join(classes)}")
        for col in (schema.CONSENSUS, schema.FLAG, schema.VERIFIED):
            if rec[col].strip() and schema.parse_bool(rec[col]) is None:  # empty = false
                bad(f"{col} must be true/false or 1/0, got '{rec[col]}'")
        if _truthy(rec[schema.CONSENSUS]) and not rec[schema.MAJORITY]:
            bad("consensus is true but majority is empty")
        if not rec[schema.MAJORITY] and not rec[schema.SUGGESTED]:
            bad("no majority (nobody graded it) and no model suggestion", "re-run the model on this dataset")
        for c in classes:
            value = rec[schema.prob_col(c)].strip()
            if value and not _is_float(value):
                bad(f"{schema.prob_col(c)} must be a number, got '{value}'")
    if problems:
        raise InputError(problems)
    frame[schema.IMAGE] = frame[schema.IMAGE].str.strip()
    return frame, classes


def export_labels(
    run_dir: Path | str,
    *,
    store: WorkspaceStore | str | Path | None = None,
    out: Path | str | None = None,
) -> pd.DataFrame:
    """Final label per image of a run (columns `schema.export_columns(classes)`); written to `out` when given."""
    run_dir = Path(run_dir)
    labels_path = run_dir / LABELS
    if out is not None and Path(out).resolve() == labels_path.resolve():
        raise InputError(Problem(str(out), "the export would overwrite the run's labels.csv", "choose another --out"))
    labels, classes = read_labels(labels_path)

    review_store, owned = open_store(run_dir, store)
    try:
        decisions = review_store.current_decisions(run_dir) if review_store is not None else None
        store_name = str(review_store.path) if review_store is not None else None
    finally:
        if owned:
            review_store.close()

    by_image: dict[str, dict] = {}
    if decisions is not None and len(decisions):
        images, known, problems = set(labels[schema.IMAGE]), set(classes), []
        for d in decisions.to_dict("records"):
            who = f"decision {d['id']} by {d['reviewer']} on image '{d['image']}'"
            if d["image"] not in images:
                problems.append(Problem(store_name, f"{who}: the image is not in {labels_path}", "check the run"))
            if d["new_label"] not in known:
                problems.append(
                    Problem(
                        store_name, f"{who}: label '{d['new_label']}' is not one of the classes {', '.join(classes)}"
                    )
                )
            by_image[d["image"]] = d
        if problems:
            raise InputError(problems)

    carried = _verified_decisions(run_dir, labels, classes)
    rows = []
    for rec in labels.to_dict("records"):
        d = by_image.get(rec[schema.IMAGE]) or carried.get(rec[schema.IMAGE])
        if d is not None:
            final, source = d["new_label"], "review"
        elif _truthy(rec[schema.CONSENSUS]):
            final, source = rec[schema.MAJORITY], "consensus"
        elif rec[schema.MAJORITY]:
            final, source = rec[schema.MAJORITY], "majority"
        else:
            final, source = rec[schema.SUGGESTED], "model"
        rows.append(
            {
                schema.IMAGE: rec[schema.IMAGE],
                schema.FINAL_LABEL: final,
                schema.SOURCE: source,
                schema.VOTES: rec[schema.VOTES],
                schema.MAJORITY: rec[schema.MAJORITY],
                **{schema.prob_col(c): _float(rec[schema.prob_col(c)]) for c in classes},
                schema.REVIEWER: d["reviewer"] if d is not None else "",
                schema.REVIEWED_AT: d["decided_at"] if d is not None else "",
                schema.NOTE: (d["note"] or "") if d is not None else "",
            }
        )
    frame = pd.DataFrame(rows, columns=schema.export_columns(classes))

    if out is not None:
        out = Path(out)
        atomic.write_csv(out, frame)
        atomic.write_json(
            provenance_path(out),
            {
                "export": out.name,
                "export_sha256": file_sha256(out),
                "rows": len(frame),
                "counts_by_source": counts_by_source(frame),
                "run_dir": str(run_dir.resolve()),
                "method": _run_method(run_dir),
                "classes": classes,
                "labels_csv": str(labels_path.resolve()),
                "labels_sha256": file_sha256(labels_path),
                "review_store": store_name,
                "decisions_applied": len(by_image),
                "verified_in_run": len(carried),
                "exported_at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
                "engine_version": __version__,
                "rule": list(RULE),
            },
        )
    return frame


def _verified_decisions(run_dir: Path, labels: pd.DataFrame, classes: list[str]) -> dict[str, dict]:
    """Verified labels of the run (labels.csv `verified`=1, label = the argmax of p:<class>, which is one-hot on it)
    as decisions, with reviewer, time and note from RUNDIR/reviewed.csv when it has them."""
    from engine.reviewed import LABEL, read_run_reviewed

    rows = labels[labels[schema.VERIFIED].map(_truthy)]
    if rows.empty:
        return {}
    kept = read_run_reviewed(run_dir / "reviewed.csv").set_index(schema.IMAGE)
    out = {}
    for rec in rows.to_dict("records"):
        probs = [_float(rec[schema.prob_col(c)]) for c in classes]
        label = classes[max(range(len(classes)), key=lambda j: probs[j])]
        info = kept.loc[rec[schema.IMAGE]].to_dict() if rec[schema.IMAGE] in kept.index else {}
        if info.get(LABEL) and info[LABEL] != label:  # labels.csv is the truth of the run; a stale copy is ignored
            info = {}
        out[rec[schema.IMAGE]] = {"new_label": label, "reviewer": info.get(schema.REVIEWER, ""),
                                  "decided_at": info.get(schema.REVIEWED_AT, ""), "note": info.get(schema.NOTE, "")}
    return out


def counts_by_source(frame: pd.DataFrame) -> dict[str, int]:
    """Rows per source, every source listed (0 when absent), in `schema.SOURCES` order."""
    counts = frame[schema.SOURCE].value_counts()
    return {s: int(counts.get(s, 0)) for s in schema.SOURCES}


def open_store(run_dir: Path, store: WorkspaceStore | str | Path | None) -> tuple[WorkspaceStore | None, bool]:
    """(store, opened_here). A path that does not exist is an error: a typo must not export without decisions."""
    if isinstance(store, WorkspaceStore):
        return store, False
    if store is None:
        default = run_dir / RUN_REVIEW_DB
        return (WorkspaceStore(default), True) if default.is_file() else (None, False)
    if not Path(store).is_file():
        raise InputError(Problem(str(store), "workspace store not found", "pass the workspace database the app uses"))
    return WorkspaceStore(store), True


def _run_method(run_dir: Path) -> str | None:
    """The method named in the run's config.json (RunConfig.to_dict(), possibly nested), or None."""
    config = RunDir(run_dir).read_config() or {}
    for candidate in (config, config.get("config")):
        if isinstance(candidate, dict):
            runtime = candidate.get("runtime")
            if isinstance(runtime, dict) and runtime.get("method"):
                return str(runtime["method"])
            if candidate.get("method"):
                return str(candidate["method"])
    return None


def _truthy(value: str) -> bool:
    return schema.parse_bool(value) is True


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _float(value: str) -> float:
    return float(value) if str(value).strip() else math.nan
