"""WorkspaceStore: decisions are append-only, committed when made, and survive concurrent writers and killed processes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.store import MIGRATIONS, SCHEMA_VERSION, WorkspaceStore, connect, migrate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path):
    with WorkspaceStore(tmp_path / "workspace.db") as s:
        yield s


def _decide(store, run, image, label, action="choose_class", **kw):
    kw.setdefault("reviewer", "dr_a")
    kw.setdefault("old_label", "normal")
    return store.add_decision(run, image, new_label=label, action=action, **kw)


def test_decision_round_trip(store, tmp_path):
    run = tmp_path / "run1"
    i = _decide(store, run, "a.png", "plus", note="clear tortuosity", old_label="pre-plus")
    cur = store.current_decisions(run)
    assert list(cur.columns) == ["id", "image", "new_label", "action", "reviewer", "decided_at", "note", "old_label"]
    row = cur.iloc[0].to_dict()
    assert row["id"] == i and row["image"] == "a.png" and row["new_label"] == "plus"
    assert row["old_label"] == "pre-plus" and row["note"] == "clear tortuosity" and row["reviewer"] == "dr_a"
    assert row["decided_at"].endswith("+00:00")  # UTC ISO-8601
    # keyed by the resolved path: a relative spelling of the same folder finds the decision
    rel = os.path.relpath(run)
    assert len(store.current_decisions(rel)) == 1
    assert store.current_decisions(tmp_path / "other").empty


def test_latest_wins_and_history_keeps_everything(store, tmp_path):
    run = tmp_path / "run"
    _decide(store, run, "a.png", "plus")
    _decide(store, run, "b.png", "normal", action="keep_majority")
    last = _decide(store, run, "a.png", "pre-plus", action="accept_suggestion", reviewer="dr_b")
    cur = store.current_decisions(run).set_index("image")
    assert cur.loc["a.png", "new_label"] == "pre-plus" and cur.loc["a.png", "id"] == last
    assert cur.loc["a.png", "reviewer"] == "dr_b"
    hist = store.history(run)
    assert list(hist["image"]) == ["a.png", "b.png", "a.png"] and hist["id"].is_monotonic_increasing
    assert list(store.history(run, "a.png")["new_label"]) == ["plus", "pre-plus"]
    assert store.count_decisions(run) == 3


def test_skip_is_logged_but_never_overrides_a_label(store, tmp_path):
    run = tmp_path / "run"
    _decide(store, run, "a.png", "plus")
    _decide(store, run, "a.png", None, action="skip")
    _decide(store, run, "b.png", None, action="skip")
    cur = store.current_decisions(run).set_index("image")
    assert cur.loc["a.png", "new_label"] == "plus"
    assert "b.png" not in cur.index
    assert list(store.history(run)["action"]) == ["choose_class", "skip", "skip"]


def test_decisions_cannot_be_updated_or_deleted(store, tmp_path):
    _decide(store, tmp_path / "run", "a.png", "plus")
    raw = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("UPDATE decisions SET new_label = 'normal'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("DELETE FROM decisions")
    raw.close()
    assert store.count_decisions() == 1


@pytest.mark.parametrize("verb", ["INSERT OR REPLACE", "REPLACE", "INSERT OR IGNORE", "INSERT"])
def test_a_decision_cannot_be_rewritten_by_inserting_its_id_again(store, tmp_path, verb):
    first = _decide(store, tmp_path / "run", "a.png", "plus", note="clear tortuosity")
    before = store.history(tmp_path / "run")
    raw = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only: a decision cannot be replaced"):
        raw.execute(
            f"{verb} INTO decisions (id, run_dir, image, reviewer, decided_at, old_label, new_label, action, note)"
            " VALUES (?, ?, 'a.png', 'mallory', '2020-01-01T00:00:00+00:00', 'plus', 'normal', 'choose_class', '')",
            (first, str((tmp_path / "run").resolve())),
        )
    raw.commit()
    raw.close()
    after = store.history(tmp_path / "run")
    assert after.equals(before) and after.iloc[0]["reviewer"] == "dr_a" and after.iloc[0]["new_label"] == "plus"
    assert _decide(store, tmp_path / "run", "a.png", "normal") == first + 1  # new rows are still accepted


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"reviewer": " "}, "reviewer is empty"),
        ({"action": "delete"}, "action 'delete' is not one of"),
        ({"new_label": ""}, "needs a new_label"),
    ],
)
def test_invalid_decisions_are_refused(store, tmp_path, kw, match):
    args = {"reviewer": "dr_a", "new_label": "plus", "old_label": "normal", "action": "choose_class", **kw}
    with pytest.raises(InputError, match=match):
        store.add_decision(tmp_path / "run", "a.png", **args)
    assert store.count_decisions() == 0


def test_migrates_an_empty_version_0_file(tmp_path):
    db = tmp_path / "old.db"
    sqlite3.connect(db).close()  # version 0, no tables
    with WorkspaceStore(db) as s:
        assert s.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        assert s.integrity_check() == "ok"


def test_migrates_a_version_1_database_keeping_its_decisions(tmp_path):
    db = tmp_path / "v1.db"
    conn = connect(db)
    assert migrate(conn, target=1) == 1
    conn.execute(
        "INSERT INTO decisions (run_dir, image, reviewer, decided_at, old_label, new_label, action, note)"
        " VALUES (?, 'a.png', 'dr_a', '2024-01-01T00:00:00+00:00', 'normal', 'plus', 'choose_class', '')",
        (str((tmp_path / "run").resolve()),),
    )
    conn.close()
    with WorkspaceStore(db) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert list(s.current_decisions(tmp_path / "run")["new_label"]) == ["plus"]
        s.save_roles(tmp_path / "ds", {"a.png": "meta"}, "dr_a")  # table added by migration 2
        assert s.load_roles(tmp_path / "ds") == {"a.png": "meta"}


def test_refuses_a_newer_schema(tmp_path):
    db = tmp_path / "new.db"
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(InputError, match="newer than this engine supports"):
        WorkspaceStore(db)


def test_durability_settings(store):
    assert sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._query("PRAGMA synchronous")[0][0] == 2  # FULL
    assert store._query("PRAGMA busy_timeout")[0][0] >= 1000


def test_job_registry_survives_restart(tmp_path):
    db, run = tmp_path / "w.db", tmp_path / "runs" / "r1"
    with WorkspaceStore(db) as s:
        rid = s.register_run(run, dataset=tmp_path / "ds", method="mslg", state="running", pid=123, config={"a": 1})
        with pytest.raises(InputError, match="run state 'lost'"):
            s.update_run(run, state="lost")
        with pytest.raises(InputError, match="not registered"):
            s.update_run(tmp_path / "nope", state="done")
    with WorkspaceStore(db) as s:  # app restart
        job = s.get_run(run)
        assert job["id"] == rid and job["state"] == "running" and job["pid"] == 123 and job["config"] == {"a": 1}
        assert job["finished_at"] is None
        done = s.update_run(run, state="done")
        assert done["state"] == "done" and done["finished_at"]
        s.register_run(tmp_path / "runs" / "r2", method="ce")
        assert [j["run_dir"] for j in s.list_runs()] == [str((tmp_path / "runs" / n).resolve()) for n in ("r2", "r1")]
        assert [j["method"] for j in s.list_runs(state="done")] == ["mslg"]
        assert s.register_run(run, method="mslg", state="running") == rid  # resume re-registers the same job
        assert s.get_run(run)["finished_at"] is None
        assert s.get_run(tmp_path / "nope") is None


def test_datasets_and_roles(store, tmp_path):
    ds = tmp_path / "rop"
    first = store.open_dataset(ds)
    assert store.open_dataset(ds) == first
    assert store.list_datasets()[0]["name"] == "rop"
    store.save_roles(ds, {"a.png": "meta", "b.png": "train"}, "dr_a")
    store.save_roles(ds, {"b.png": "test"}, "dr_b", replace=False)  # latest wins per image
    assert store.load_roles(ds) == {"a.png": "meta", "b.png": "test"}
    store.save_roles(ds, {"c.png": "unlabeled"}, "dr_a")  # replace-all
    assert store.load_roles(ds) == {"c.png": "unlabeled"}
    with pytest.raises(InputError, match="role 'holdout'"):
        store.save_roles(ds, {"a.png": "meta", "d.png": "holdout"}, "dr_a")
    assert store.load_roles(ds) == {"c.png": "unlabeled"}  # a refused save changes nothing
    assert store.load_roles(tmp_path / "other") == {}


def _python(code: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, **kw
    )


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    db, go = tmp_path / "fresh.db", tmp_path / "go"
    code = """
        import sys, time
        from pathlib import Path
        from engine.store import WorkspaceStore
        print("ready", flush=True)
        while not Path(sys.argv[2]).exists():
            time.sleep(0.01)
        s = WorkspaceStore(sys.argv[1])  # both open (and migrate) the fresh file at the same time
        for i in range(100):
            s.add_decision("run", f"{sys.argv[3]}-{i}.png", reviewer=sys.argv[3], new_label="plus",
                           old_label="normal", action="choose_class")
        print("done", flush=True)
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(db), str(go), who],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            text=True,
            stdout=subprocess.PIPE,
        )
        for who in ("dr_a", "dr_b")
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "done"
    with WorkspaceStore(db) as s:
        hist = s.history(ROOT / "run")
        assert len(hist) == 200 and hist["id"].is_unique
        assert hist.groupby("reviewer").size().to_dict() == {"dr_a": 100, "dr_b": 100}
        assert s.integrity_check() == "ok"


def test_a_killed_writer_loses_no_committed_decision(tmp_path):
    db = tmp_path / "w.db"
    code = f"""
        from engine.store import WorkspaceStore
        s = WorkspaceStore({str(db)!r})
        for i in range(100_000):
            print(s.add_decision("run", f"img-{{i}}.png", reviewer="dr_a", new_label="plus", old_label="normal",
                                 action="choose_class"), flush=True)
    """
    proc = _python(code)
    ids = []
    deadline = time.monotonic() + 60
    while len(ids) < 30 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        ids.append(int(line))
    proc.kill()  # SIGKILL mid-way: no cleanup, no close()
    proc.wait(timeout=30)
    proc.stdout.close()
    assert len(ids) == 30, "the writer died before it was killed"
    with WorkspaceStore(db) as s:
        assert s.integrity_check() == "ok"
        stored = set(s.history(ROOT / "run")["id"])
        assert set(ids) <= stored
        assert len(stored) >= len(ids)
