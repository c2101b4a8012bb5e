"""Bad datasets: one InputError naming file, 1-based data row and a fix; through the CLI exit code 2, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine.data.votes import read_votes
from engine.errors import InputError

H = ["image", "a", "b"]


def _no_votes(root, mv, png):
    root.mkdir()


def _no_image_col(root, mv, png):
    mv(root, ["file", "a", "b"], [["x.png", "n", "n"]], images=False)


def _no_expert(root, mv, png):
    mv(root, ["image", "role", "note"], [["x.png", "", ""]])


def _duplicate(root, mv, png):
    mv(root, H, [["x.png", "n", "n"], ["./x.png", "p", "p"]])


def _dotdot(root, mv, png):
    png(root.parent / "x.png")
    mv(root, H, [["ok.png", "n", "n"], ["../x.png", "n", "n"]])


def _absolute(root, mv, png):
    mv(root, H, [[str(root.parent / "x.png"), "n", "n"]])


def _symlink(root, mv, png):
    png(root.parent / "outside.png")
    mv(root, H, [["link.png", "n", "n"]], images=False)
    os.symlink(root.parent / "outside.png", root / "link.png")


def _missing(root, mv, png):
    mv(root, H, [["gone.png", "n", "n"]], images=False)


def _empty_file(root, mv, png):
    mv(root, H, [["e.png", "n", "n"]], images=False)
    (root / "e.png").write_bytes(b"")


def _corrupt(root, mv, png):
    mv(root, H, [["c.png", "n", "n"]], images=False)
    (root / "c.png").write_bytes(np.random.default_rng(0).bytes(200))


def _truncated(root, mv, png):
    mv(root, H, [["t.png", "n", "n"]], images=False)
    png(root / "full.png", size=32)
    data = (root / "full.png").read_bytes()
    (root / "t.png").write_bytes(data[: len(data) // 2])


def _truncated_dicom(root, mv, png):
    from conftest_images import write_gray  # the images engineer's DICOM writer (same folder)

    mv(root, H, [["scan.dcm", "n", "n"]], images=False)
    write_gray(root / "full.dcm", np.arange(256, dtype=np.uint8).reshape(16, 16))
    data = (root / "full.dcm").read_bytes()
    (root / "scan.dcm").write_bytes(data[:-100])


def _unknown_class(root, mv, png):
    mv(root, H, [["x.png", "normal", "plus"], ["y.png", "plus+", "normal"], ["z.png", "NA", "plus+"]])
    return ["--classes", "normal,plus"]


def _case_variants(root, mv, png):
    mv(root, H, [["x.png", "plus", "Plus"], ["y.png", "normal", "normal"], ["z.png", "Plus", "normal"]])


def _unknown_role(root, mv, png):
    mv(root, ["image", "role", "a"], [["x.png", "train", "n"], ["y.png", "validation", "n"]])


def _no_rows(root, mv, png):
    mv(root, H, [])


def _cp1252(root, mv, png):
    png(root / "x.png")
    (root / "votes.csv").write_bytes("image,dr_é\nx.png,normal\n".encode("cp1252"))


def _utf16(root, mv, png):
    png(root / "x.png")
    (root / "votes.csv").write_bytes("image,a\nx.png,normal\n".encode("utf-16"))


CASES = [
    (_no_votes, r"votes\.csv: not found"),
    (_no_image_col, r"votes\.csv: has no 'image' column"),
    (_no_expert, r"votes\.csv: has no expert column"),
    (_duplicate, r"votes\.csv row 2: image '\./x\.png' is listed again \(first at row 1\)"),
    (_dotdot, r"votes\.csv row 2: image '\.\./x\.png' is outside the dataset folder"),
    (_absolute, r"row 1: image '.*x\.png' is an absolute path"),
    (_symlink, r"row 1: image 'link\.png' is a symbolic link to a file outside the dataset folder"),
    (_missing, r"row 1: image file 'gone\.png' not found"),
    (_empty_file, r"row 1: image 'e\.png': file is empty"),
    (_corrupt, r"row 1: image 'c\.png': not a readable image"),
    (_truncated, r"row 1: image 't\.png': not a readable image \(truncated"),
    (_truncated_dicom, r"row 1: image 'scan\.dcm': "),
    (_unknown_class, r"row 2: class 'plus\+' is not in --classes normal,plus \(also row 3\)"),
    (_case_variants, r"row 1: class values 'Plus' \(rows 1, 3\) and 'plus' \(row 1\) differ only in upper/lower case"),
    (_unknown_role, r"row 2: role 'validation' is not one of meta, test, train, unlabeled"),
    (_no_rows, r"votes\.csv: has no data rows"),
    (_cp1252, r"is not UTF-8 \(it looks like Windows-1252.*save the file as UTF-8"),
    (_utf16, r"is saved as UTF-16 .*byte-order mark.*save the file as UTF-8"),
]


@pytest.mark.parametrize(("build", "match"), CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_bad_input(build, match, tmp_path, make_votes, make_png, cli_main, capsys):
    root = tmp_path / "ds"
    extra = build(root, make_votes, make_png) or []
    classes = extra[1] if extra else None
    with pytest.raises(InputError, match=match) as err:
        read_votes(root, classes=classes)
    assert all(p.fix and p.file for p in err.value.problems)

    out = tmp_path / "roles.csv"
    assert cli_main(["split", str(root), "--out", str(out), *extra]) == 2
    assert not out.exists()
    assert "nothing was written" in capsys.readouterr().err


def test_unknown_class_hints_at_empty_cell(tmp_path, make_votes, make_png):
    _unknown_class(tmp_path / "ds", make_votes, make_png)
    with pytest.raises(InputError) as err:
        read_votes(tmp_path / "ds", classes="normal,plus")
    na = [p for p in err.value.problems if "'NA'" in p.problem]
    assert len(na) == 1 and na[0].row == 3 and "leave the cell empty" in na[0].fix


def test_all_problems_reported_at_once(tmp_path, make_votes, make_png):
    root = tmp_path / "ds"
    make_votes(
        root,
        ["image", "role", "a", "b"],
        [
            ["x.png", "", "normal", "normal"],
            ["x.png", "", "normal", "normal"],  # duplicate
            ["gone.png", "", "normal", "plus"],  # missing file
            ["y.png", "later", "plus", "plus"],  # bad role
            ["../z.png", "", "plus", ""],  # outside
        ],
    )
    (root / "gone.png").unlink()
    with pytest.raises(InputError) as err:
        read_votes(root)
    rows = sorted(p.row for p in err.value.problems)
    assert rows == [2, 3, 4, 5]
    assert str(err.value).count("votes.csv row") == 4


def test_cli_inspect_bad_input_exit_2(tmp_path, make_votes, cli_main, capsys):
    make_votes(tmp_path / "ds", ["image", "a"], [["gone.png", "n"]], images=False)
    assert cli_main(["inspect", str(tmp_path / "ds"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "row 1: image file 'gone.png' not found" in captured.err


def test_bad_classes_and_sizes_through_cli(small_dataset, tmp_path, cli_main, capsys):
    out = tmp_path / "r.csv"
    assert cli_main(["split", str(small_dataset), "--classes", "normal,normal", "--out", str(out)]) == 2
    assert cli_main(["split", str(small_dataset), "--meta", "-3", "--out", str(out)]) == 2
    assert cli_main(["split", str(tmp_path / "nowhere"), "--test", "-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "listed twice" in err and "--meta" in err
    assert "--test: must be a count" in err and "dataset folder not found" in err  # both reported at once
    assert not out.exists()


def test_preset_roles_straddling_a_patient(tmp_path, make_votes):
    make_votes(
        tmp_path / "ds",
        ["image", "role", "patient_id", "a", "b"],
        [["x.png", "meta", "P12", "n", "n"], ["y.png", "test", "P12", "n", "n"], ["z.png", "", "P12", "n", "n"]],
    )
    with pytest.raises(InputError, match=r"row 1: patient P12 is in both meta \(row 1\) and test \(row 2\)"):
        read_votes(Path(tmp_path / "ds"))


def test_one_missing_file_in_10000_rows_is_two_problems_naming_the_rows(tmp_path, make_votes, cli_main, capsys):
    """10,000 rows naming the same missing file used to print 19,999 problem lines."""
    root = make_votes(tmp_path / "ds", H, [["images/x.png", "n", "n"]] * 10_000, images=False)
    with pytest.raises(InputError) as err:
        read_votes(root)
    texts = [str(p) for p in err.value.problems]
    assert texts == [
        f"{root / 'votes.csv'} rows 1–10000: image file 'images/x.png' not found (fix: check the path (relative to "
        "the dataset folder) or remove the row)",
        f"{root / 'votes.csv'} rows 2–10000: image 'images/x.png' is listed again (first at row 1) (fix: keep one "
        "row per image (merge the grades into it))",
    ]
    assert err.value.problems[0].rows == tuple(range(1, 10_001))
    assert cli_main(["inspect", str(root)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: 2 problems in the input; nothing was written." and len(lines) == 3


def test_problem_list_is_capped_with_a_total(tmp_path, make_votes, cli_main, capsys):
    rows = [[f"img{i}.png", "n", "n"] for i in range(120)]  # 120 different missing files: 120 problems
    root = make_votes(tmp_path / "ds", H, rows, images=False)
    assert cli_main(["inspect", str(root)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: 120 problems in the input; nothing was written."
    assert len(lines) == 1 + 50 + 1
    assert lines[-1] == "  ... and 70 more problems (120 in all): fix the ones above and run again"


def test_rows_are_listed_as_ranges():
    from engine.errors import Problem, group_problems, rows_text

    assert rows_text([7]) == "row 7"
    assert rows_text([1, 2]) == "rows 1, 2"
    assert rows_text([*range(3, 8), 9, 20, 21]) == "rows 3–7, 9, 20, 21"
    assert rows_text(list(range(0, 40, 2)), limit=3) == "rows 0, 2, 4 and 17 more"
    grouped = group_problems([Problem("f", "bad", "fix", row=r) for r in (4, 2, 3)] + [Problem("f", "other", row=9)])
    assert [str(p) for p in grouped] == ["f rows 2–4: bad (fix: fix)", "f row 9: other"]
    assert grouped[0].as_dict()["rows"] == "2–4" and grouped[0].row == 2
