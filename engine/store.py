"""The app's workspace store: opened datasets, the job registry, saved meta-set roles and the review decisions.

One SQLite file (standard `sqlite3`) in WAL mode with `synchronous=FULL`, so a clinician's decision, once
`add_decision` has returned, survives a killed process or a power cut. Two processes writing at once wait
for each other (busy timeout) instead of failing. The schema is versioned with `PRAGMA user_version`;
`MIGRATIONS` are applied in order when a store is opened, each in its own transaction.

Decision log rules (the audit trail):
- `decisions` is append-only: SQLite triggers abort any UPDATE or DELETE of a row, and an INSERT (OR REPLACE)
  that reuses an existing id. A change of mind is a new row.
- Each decision is committed on its own when it is made.
- "Latest" means the highest `id` (insertion order), not the clock, so a clock that jumps back changes nothing.
- The current decision for an image is its latest row whose action is not `skip`. A `skip` row records that
  the reviewer looked and passed; it never erases an earlier label decision (see `current_decisions`).
- Run folders and datasets are keyed by their resolved absolute path (`Path.resolve()`); images by the
  `image` string of labels.csv / votes.csv (relative to the dataset folder).

Privacy: the store holds paths, labels, reviewer names and free-text notes only; never DICOM header fields.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.data import schema
from engine.errors import InputError, Problem
from engine.rundir import STATES

if TYPE_CHECKING:  # pandas is imported lazily: job runners and tests' child processes open the store without it
    import pandas as pd

ACTIONS = ("accept_suggestion", "keep_majority", "choose_class", "skip")
SKIP = "skip"
BUSY_TIMEOUT_MS = 30_000  # a writer waits up to 30 s for another process's transaction instead of failing

# Columns of the frames returned by current_decisions() and history().
CURRENT_COLUMNS = ["id", "image", "new_label", "action", "reviewer", "decided_at", "note", "old_label"]
HISTORY_COLUMNS = ["id", "run_dir", "image", "reviewer", "decided_at", "old_label", "new_label", "action", "note"]
RUN_FIELDS = ("id", "run_dir", "dataset", "method", "state", "pid", "started_at", "finished_at", "config")
TERMINAL_STATES = ("done", "failed", "cancelled")

_ACTIONS_SQL = ", ".join(f"'{a}'" for a in ACTIONS)

# MIGRATIONS[i] takes a database from user_version i to i + 1. Append only; never edit a released migration.
MIGRATIONS: list[tuple[str, ...]] = [
    # 1: datasets, runs (the job registry) and the append-only decision log.
    (
        """CREATE TABLE datasets (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            opened_at TEXT NOT NULL)""",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_dir TEXT NOT NULL UNIQUE,
            dataset TEXT,
            method TEXT,
            state TEXT NOT NULL,
            pid INTEGER,
            started_at TEXT,
            finished_at TEXT,
            config TEXT)""",
        f"""CREATE TABLE decisions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_dir TEXT NOT NULL,
            image TEXT NOT NULL,
            reviewer TEXT NOT NULL CHECK (length(trim(reviewer)) > 0),
            decided_at TEXT NOT NULL,
            old_label TEXT,
            new_label TEXT,
            action TEXT NOT NULL CHECK (action IN ({_ACTIONS_SQL})),
            note TEXT NOT NULL DEFAULT '')""",
        """CREATE TRIGGER decisions_no_update BEFORE UPDATE ON decisions
           BEGIN SELECT RAISE(ABORT, 'decisions are append-only: a decision cannot be updated'); END""",
        """CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions
           BEGIN SELECT RAISE(ABORT, 'decisions are append-only: a decision cannot be deleted'); END""",
    ),
    # 2: the meta-set editor's saved roles, and an index for "latest decision per image".
    (
        """CREATE TABLE roles (
            dataset TEXT NOT NULL,
            image TEXT NOT NULL,
            role TEXT NOT NULL,
            set_by TEXT NOT NULL,
            set_at TEXT NOT NULL,
            PRIMARY KEY (dataset, image))""",
        "CREATE INDEX decisions_run_image ON decisions (run_dir, image, id)",
    ),
    # 3: INSERT OR REPLACE (or REPLACE INTO) with an existing id deletes the old row without firing the DELETE
    # trigger (SQLite's REPLACE does not fire delete triggers unless recursive_triggers is on), so it could
    # rewrite a decision: refuse any insert whose id is taken.
    (
        """CREATE TRIGGER decisions_no_replace BEFORE INSERT ON decisions
           WHEN NEW.id IS NOT NULL AND EXISTS (SELECT 1 FROM decisions WHERE id = NEW.id)
           BEGIN SELECT RAISE(ABORT, 'decisions are append-only: a decision cannot be replaced'); END""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


def utc_now() -> str:
    """Current UTC time as ISO-8601 with milliseconds, e.g. 2025-01-31T09:15:02.123+00:00."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _key(path: Path | str) -> str:
    """The store's key for a run folder or dataset: its resolved absolute path."""
    return str(Path(path).expanduser().resolve())


def _required(value: Any, name: str, where: str) -> str:
    if value is None or not str(value).strip():
        raise InputError(Problem(where, f"{name} is empty", f"give a non-empty {name}"))
    return str(value)


def migrate(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION, where: str = "workspace store") -> int:
    """Bring an autocommit connection's database up to `target`, one transaction per migration; returns the version."""
    while True:
        conn.execute("BEGIN IMMEDIATE")  # re-read the version under the write lock: another process may migrate too
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InputError(
                    Problem(
                        where,
                        f"database schema version {version} is newer than this engine supports ({SCHEMA_VERSION})",
                        "update the tool; do not open a newer workspace with an older version",
                    )
                )
            if version >= target:
                conn.execute("COMMIT")
                return version
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _check_workspace_file(path: Path) -> None:
    """Refuse, before changing anything in it, a file that is not SQLite or is another program's SQLite database
    (schema version 0 yet tables in it): opening it as a store would switch it to WAL and add our tables."""
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new store
    fix = "give the app workspace's review.db (e.g. data/workspace/review.db)"
    try:
        with closing(sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)) as conn:  # reads only
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            has_tables = conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None
    except sqlite3.DatabaseError as err:  # e.g. "file is not a database"
        raise InputError(Problem(str(path), f"is not a workspace database ({err})", fix)) from None
    if version == 0 and has_tables:
        raise InputError(Problem(str(path), "is an SQLite database of another program, not a workspace database",
                                 fix))


def _set_wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL and return the journal mode. Two processes opening a new database at once can get "database is
    locked" here without SQLite's busy handler waiting (the switch needs an exclusive lock), so retry for up to the
    busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def connect(db_path: Path | str) -> sqlite3.Connection:
    """Open an autocommit connection with the store's durability settings (WAL, synchronous=FULL, busy timeout)."""
    conn = sqlite3.connect(str(db_path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = _set_wal(conn)
    if str(mode).lower() != "wal":  # e.g. a file system without shared memory: keep the safe rollback journal
        conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA synchronous = FULL")  # fsync at every commit: a decision once made is never lost
    return conn


class WorkspaceStore:
    """The workspace database. Thread-safe (one connection behind a lock) for Streamlit's `st.cache_resource`."""

    def __init__(self, db_path: Path | str):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        _check_workspace_file(self.path)
        self._conn = connect(self.path)
        try:
            migrate(self._conn, where=str(self.path))
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing -------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> WorkspaceStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WorkspaceStore({str(self.path)!r})"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken with the write lock up front (BEGIN IMMEDIATE) so it never deadlocks."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._conn.cursor()
            cur.row_factory = sqlite3.Row
            return cur.execute(sql, params).fetchall()

    def schema_version(self) -> int:
        return self._query("PRAGMA user_version")[0][0]

    def integrity_check(self) -> str:
        """SQLite's own consistency check: 'ok' when the file is sound."""
        return self._query("PRAGMA integrity_check")[0][0]

    # -- decisions (append-only audit log) --------------------------------------------------------------------
    def add_decision(
        self,
        run_dir: Path | str,
        image: str,
        *,
        reviewer: str,
        new_label: str | None,
        old_label: str | None,
        action: str,
        note: str = "",
    ) -> int:
        """Append one review decision and commit it before returning its id. `new_label` may be None only for skip."""
        where = str(self.path)
        problems = []
        for name, value in (("run_dir", run_dir), ("image", image), ("reviewer", reviewer)):
            if value is None or not str(value).strip():
                problems.append(Problem(where, f"{name} is empty", f"give a non-empty {name}"))
        if action not in ACTIONS:
            problems.append(Problem(where, f"action {action!r} is not one of {', '.join(ACTIONS)}"))
        elif action != SKIP and (new_label is None or not str(new_label).strip()):
            problems.append(Problem(where, f"action '{action}' needs a new_label", "pick the class to record"))
        if problems:
            raise InputError(problems)
        row = (
            _key(run_dir),
            str(image),
            str(reviewer).strip(),
            utc_now(),
            None if old_label is None else str(old_label),
            None if new_label is None else str(new_label),
            action,
            note or "",
        )
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO decisions (run_dir, image, reviewer, decided_at, old_label, new_label, action, note)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return int(cur.lastrowid)

    def current_decisions(self, run_dir: Path | str) -> pd.DataFrame:
        """The decision in force per image: its latest non-skip row. Columns `CURRENT_COLUMNS`, ordered by id."""
        rows = self._query(
            "SELECT d.* FROM decisions d JOIN ("
            "  SELECT MAX(id) AS id FROM decisions WHERE run_dir = ? AND action != ? GROUP BY image"
            ") latest ON d.id = latest.id ORDER BY d.id",
            (_key(run_dir), SKIP),
        )
        return _frame(rows, CURRENT_COLUMNS)

    def history(self, run_dir: Path | str, image: str | None = None) -> pd.DataFrame:
        """Every decision row of a run (or of one image), skips included, in the order they were made."""
        sql, params = "SELECT * FROM decisions WHERE run_dir = ?", [_key(run_dir)]
        if image is not None:
            sql, params = sql + " AND image = ?", [*params, str(image)]
        return _frame(self._query(sql + " ORDER BY id", tuple(params)), HISTORY_COLUMNS)

    def count_decisions(self, run_dir: Path | str | None = None) -> int:
        """Number of decision rows (all runs when run_dir is None)."""
        if run_dir is None:
            return self._query("SELECT COUNT(*) FROM decisions")[0][0]
        return self._query("SELECT COUNT(*) FROM decisions WHERE run_dir = ?", (_key(run_dir),))[0][0]

    # -- runs (job registry) ------------------------------------------------------------------------------------
    def register_run(
        self,
        run_dir: Path | str,
        *,
        dataset: Path | str | None = None,
        method: str | None = None,
        state: str = "queued",
        pid: int | None = None,
        config: dict | None = None,
    ) -> int:
        """Record a job (or re-record it, e.g. on resume: fields are replaced, finished_at cleared); returns its id."""
        _required(run_dir, "run_dir", str(self.path))
        _check_state(state, str(self.path))
        values = (
            _key(run_dir),
            None if dataset is None else _key(dataset),
            method,
            state,
            pid,
            utc_now(),
            utc_now() if state in TERMINAL_STATES else None,
            None if config is None else json.dumps(config, default=str),
        )
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO runs (run_dir, dataset, method, state, pid, started_at, finished_at, config)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_dir) DO UPDATE SET"
                " dataset = excluded.dataset, method = excluded.method, state = excluded.state, pid = excluded.pid,"
                " started_at = excluded.started_at, finished_at = excluded.finished_at, config = excluded.config",
                values,
            )
            return int(conn.execute("SELECT id FROM runs WHERE run_dir = ?", (values[0],)).fetchone()[0])

    def update_run(
        self,
        run_dir: Path | str,
        *,
        state: str | None = None,
        pid: int | None = None,
        finished_at: str | None = None,
        config: dict | None = None,
    ) -> dict:
        """Change the given fields of a registered job; a terminal state sets finished_at (now) unless given."""
        where = str(self.path)
        fields: dict[str, Any] = {}
        if state is not None:
            _check_state(state, where)
            fields["state"] = state
            if state in TERMINAL_STATES and finished_at is None:
                finished_at = utc_now()
        if pid is not None:
            fields["pid"] = int(pid)
        if finished_at is not None:
            fields["finished_at"] = finished_at
        if config is not None:
            fields["config"] = json.dumps(config, default=str)
        key = _key(run_dir)
        with self._tx() as conn:
            if fields:
                sets = ", ".join(f"{name} = ?" for name in fields)  # names come from the fixed set above
                cur = conn.execute(f"UPDATE runs SET {sets} WHERE run_dir = ?", (*fields.values(), key))
                found = cur.rowcount > 0
            else:
                found = conn.execute("SELECT 1 FROM runs WHERE run_dir = ?", (key,)).fetchone() is not None
        if not found:
            raise InputError(Problem(where, f"run '{key}' is not registered", "register_run() it first"))
        return self.get_run(run_dir)

    def get_run(self, run_dir: Path | str) -> dict | None:
        """The job record of a run folder (config parsed back to a dict), or None when unknown."""
        rows = self._query("SELECT * FROM runs WHERE run_dir = ?", (_key(run_dir),))
        return _run_dict(rows[0]) if rows else None

    def list_runs(self, *, dataset: Path | str | None = None, state: str | None = None) -> list[dict]:
        """Job records, newest first, optionally filtered by dataset and/or state."""
        sql, params = "SELECT * FROM runs WHERE 1 = 1", []
        if dataset is not None:
            sql, params = sql + " AND dataset = ?", [*params, _key(dataset)]
        if state is not None:
            sql, params = sql + " AND state = ?", [*params, state]
        return [_run_dict(r) for r in self._query(sql + " ORDER BY id DESC", tuple(params))]

    # -- datasets -------------------------------------------------------------------------------------------------
    def open_dataset(self, path: Path | str, *, name: str | None = None) -> int:
        """Record that a dataset folder was opened (now); returns its id. The name defaults to the folder name."""
        _required(path, "dataset path", str(self.path))
        key = _key(path)
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO datasets (path, name, opened_at) VALUES (?, ?, ?) ON CONFLICT (path) DO UPDATE SET"
                " opened_at = excluded.opened_at, name = COALESCE(?, datasets.name)",
                (key, name or Path(key).name, utc_now(), name),
            )
            return int(conn.execute("SELECT id FROM datasets WHERE path = ?", (key,)).fetchone()[0])

    def list_datasets(self) -> list[dict]:
        """Opened datasets, most recently opened first."""
        rows = self._query("SELECT id, path, name, opened_at FROM datasets ORDER BY opened_at DESC, id DESC")
        return [dict(r) for r in rows]

    # -- roles (meta-set editor) ------------------------------------------------------------------------------------
    def save_roles(self, dataset: Path | str, roles: dict[str, str], set_by: str, *, replace: bool = True) -> int:
        """Save image -> role in one transaction. replace=True replaces the dataset's whole assignment;
        replace=False updates only the given images (latest wins). Returns the number of rows written."""
        where = str(self.path)
        _required(set_by, "set_by", where)
        bad = [
            Problem(where, f"image '{img}': role {role!r} is not one of {', '.join(schema.ROLES)}")
            for img, role in roles.items()
            if role not in schema.ROLES
        ]
        bad += [Problem(where, "an image name is empty") for img in roles if not str(img).strip()]
        if bad:
            raise InputError(bad)
        key, now = _key(dataset), utc_now()
        with self._tx() as conn:
            if replace:
                conn.execute("DELETE FROM roles WHERE dataset = ?", (key,))
            conn.executemany(
                "INSERT INTO roles (dataset, image, role, set_by, set_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (dataset, image) DO UPDATE SET role = excluded.role, set_by = excluded.set_by,"
                " set_at = excluded.set_at",
                [(key, str(img), role, str(set_by), now) for img, role in roles.items()],
            )
        return len(roles)

    def load_roles(self, dataset: Path | str) -> dict[str, str]:
        """The saved image -> role assignment of a dataset ({} when none was saved)."""
        rows = self._query("SELECT image, role FROM roles WHERE dataset = ? ORDER BY image", (_key(dataset),))
        return {r["image"]: r["role"] for r in rows}


def _check_state(state: str, where: str) -> None:
    if state not in STATES:
        raise InputError(Problem(where, f"run state {state!r} is not one of {', '.join(STATES)}"))


def _run_dict(row: sqlite3.Row) -> dict:
    d = {name: row[name] for name in RUN_FIELDS}
    d["config"] = json.loads(d["config"]) if d["config"] else None
    return d


def _frame(rows: list[sqlite3.Row], columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame([{c: r[c] for c in columns} for r in rows], columns=columns)
    frame["id"] = frame["id"].astype("int64")
    return frame
