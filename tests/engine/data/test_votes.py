"""read_votes: the dataset contract (columns, class order, warnings, encodings) and a CSV round-trip property."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data import schema as S
from engine.data.votes import parse_classes, read_votes
from engine.errors import InputError


def test_reads_contract_columns_and_votes_matrix(small_dataset):
    t = read_votes(small_dataset, classes="normal,pre-plus,plus")
    assert list(t.frame.columns) == ["image", "role", "patient_id", "note", "dr_a", "dr_b", "dr_c"]
    assert t.experts == ["dr_a", "dr_b", "dr_c"]
    assert t.classes == ["normal", "pre-plus", "plus"]
    assert t.frame[S.ROLE].eq("").all() and t.frame[S.NOTE].eq("").all()  # optional columns filled with ""
    m = t.votes_matrix()
    assert m.shape == (12, 3) and m.dtype == np.int64
    assert m[3].tolist() == [2, 1, 2]
    assert m[7].tolist() == [-1, -1, -1]
    assert t.rows == list(range(1, 13))


def test_class_order_default_is_the_rop_severity_scale(small_dataset):
    t = read_votes(small_dataset)
    assert t.classes == ["normal", "pre-plus", "plus"]  # a known scale: ties resolve toward plus
    assert not any("no --classes given" in w.message for w in t.warnings)


def test_class_order_default_is_sorted_with_a_warning_for_unknown_scales(tmp_path, make_votes):
    root = make_votes(tmp_path / "ds", ["image", "a", "b"], [["x.png", "zeta", "zeta"], ["y.png", "alpha", "zeta"]])
    t = read_votes(root)
    assert t.classes == ["alpha", "zeta"]
    assert any("no --classes given" in w.message for w in t.warnings)


def test_warnings_single_grader_and_class_without_consensus(tmp_path, make_votes):
    root = make_votes(
        tmp_path / "ds",
        ["image", "a", "b"],
        [
            ["x.png", "normal", "normal"],
            ["y.png", "plus", ""],
            ["z.png", "plus", "normal"],
        ],
    )
    t = read_votes(root, classes=["normal", "plus"])
    text = [w.message for w in t.warnings]
    assert any("1 image graded by one expert only (row 2)" in m for m in text)
    assert any("class 'plus' has no consensus image" in m for m in text)
    # consensus means every grader agrees (as everywhere else), not "two experts agreeing", which a majority is
    assert any("at least two experts who all agree" in m for m in text)
    assert not any("class 'normal' has no consensus" in m for m in text)


def test_empty_patient_ids_are_warned_with_their_rows(tmp_path, make_votes, cli_main, capsys):
    rows = [["a.png", "P1", "n", "n"], ["b.png", "", "n", "p"], ["c.png", "P2", "p", "p"], ["d.png", " ", "p", "n"]]
    root = make_votes(tmp_path / "ds", ["image", "patient_id", "a", "b"], rows)
    t = read_votes(root)
    warned = [w.message for w in t.warnings if "patient_id" in w.message]
    assert len(warned) == 1 and warned[0].startswith("2 images have an empty patient_id (rows 2, 4)")
    assert cli_main(["inspect", str(root)]) == 0
    assert "2 images have an empty patient_id (rows 2, 4)" in capsys.readouterr().out
    # no patient_id column at all: nothing to warn about (every image is its own patient by design)
    no_column = make_votes(tmp_path / "ds2", ["image", "a", "b"], [r[:1] + r[2:] for r in rows])
    assert not any("patient_id" in w.message for w in read_votes(no_column).warnings)


def test_whitespace_roles_windows_paths_and_blank_lines(tmp_path, make_png):
    root = tmp_path / "ds"
    make_png(root / "sub" / "a.png")
    make_png(root / "b.png")
    (root / "votes.csv").write_text(
        " image , role ,dr_a, dr_b \n"
        " sub\\..\\sub\\.\\a.png , Train , normal , plus \n"
        "\n"  # blank line: skipped but counted
        "b.png,, plus ,plus\n",
        encoding="utf-8",
    )
    t = read_votes(root)
    assert t.frame[S.IMAGE].tolist() == ["sub/a.png", "b.png"]
    assert t.frame[S.ROLE].tolist() == ["train", ""]
    assert t.frame["dr_b"].tolist() == ["plus", "plus"]
    assert t.rows == [1, 3]


def test_semicolon_separated_file_and_unnamed_empty_column(tmp_path, make_png):
    root = tmp_path / "ds"
    make_png(root / "a.png")
    (root / "votes.csv").write_text("image;dr_a;dr_b;\na.png;normal;plus;\n", encoding="utf-8")
    t = read_votes(root)
    assert t.experts == ["dr_a", "dr_b"]
    assert t.frame.loc[0, "dr_b"] == "plus"


def test_utf8_bom_is_accepted_with_a_warning(tmp_path, make_png):
    root = tmp_path / "ds"
    make_png(root / "a.png")
    (root / "votes.csv").write_bytes("image,dr_é\na.png,normal\n".encode("utf-8-sig"))
    t = read_votes(root)
    assert t.experts == ["dr_é"]  # the BOM did not end up in the first column name
    assert any("byte-order mark" in w.message and "UTF-8 without BOM" in w.message for w in t.warnings)


def test_check_images_false_does_not_open_files(tmp_path, make_votes):
    root = make_votes(tmp_path / "ds", ["image", "a", "b"], [["missing.png", "x", "y"]], images=False)
    assert len(read_votes(root, check_images=False).frame) == 1
    make_votes(tmp_path / "out", ["image", "a", "b"], [["../x.png", "x", "y"]], images=False)
    with pytest.raises(InputError, match="outside the dataset folder"):  # paths are still refused
        read_votes(tmp_path / "out", check_images=False)
    with pytest.raises(InputError, match="not found"):
        read_votes(root)


def test_parse_classes():
    assert parse_classes(None) is None
    assert parse_classes(" normal , plus ") == ["normal", "plus"]
    assert parse_classes(["a", "b"]) == ["a", "b"]
    with pytest.raises(InputError, match="listed twice"):
        parse_classes("a,a,b")
    with pytest.raises(InputError, match="fewer than two"):
        parse_classes("a")


# ---- property: arbitrary expert names and class names survive a write/read round-trip -------------------------

_name_chars = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters=',;="')
_names = (
    st.text(_name_chars, min_size=1, max_size=8)
    .map(str.strip)
    .filter(lambda s: s and s.lower() not in S.RESERVED_INPUT_COLUMNS)
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    experts=st.lists(_names, min_size=1, max_size=4, unique=True),
    classes=st.lists(_names, min_size=2, max_size=4, unique=True),
    data=st.data(),
)
def test_round_trip_arbitrary_names(experts, classes, data):
    n = data.draw(st.integers(1, 6))
    grades = data.draw(
        st.lists(
            st.lists(st.sampled_from(["", *classes]), min_size=len(experts), max_size=len(experts)),
            min_size=n,
            max_size=n,
        )
    )
    grades[0][0] = classes[0]  # at least one grade
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        with open(root / "votes.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["image", *experts])
            w.writerows([f"im{i}.png", *g] for i, g in enumerate(grades))
        t = read_votes(root, classes=classes, check_images=False)
    assert t.experts == experts
    assert t.classes == classes
    assert t.frame[experts].values.tolist() == grades
    m = t.votes_matrix()
    expected = [[classes.index(v) if v else -1 for v in g] for g in grades]
    assert m.tolist() == expected
