"""Dataset zip upload: safe extraction (zip-slip, symlinks, non-image members refused) and the Data page flow."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from app.components.upload import extract_dataset_zip
from engine.errors import InputError


def _zip(members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _dataset_members(src: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*")
            if p.is_file() and p.name != "ground_truth.csv"}


def test_extracts_a_dataset_zip_and_finds_votes_csv(tmp_path, demo_src):
    data = _zip(_dataset_members(demo_src, prefix="study/"))
    root = extract_dataset_zip(data, "study.zip", tmp_path / "datasets")
    assert (root / "votes.csv").is_file() and root.name == "study"
    assert extract_dataset_zip(data, "study.zip", tmp_path / "datasets") == root  # same bytes: reused


@pytest.mark.parametrize(("name", "match"), [
    ("../evil.png", "outside the dataset folder"),
    ("/etc/evil.png", "absolute path"),
    ("images/../../evil.png", "outside the dataset folder"),
    ("C:/evil.png", "absolute path"),
    ("run.sh", "is not an image"),
    ("images/x.exe", "is not an image"),
])
def test_refuses_dangerous_or_foreign_members(tmp_path, name, match):
    data = _zip({"votes.csv": b"image,dr_a\nimages/a.png,plus\n", "images/a.png": b"x", name: b"payload"})
    with pytest.raises(InputError, match=match):
        extract_dataset_zip(data, "bad.zip", tmp_path / "datasets")
    assert not any((tmp_path / "datasets").glob("*/votes.csv"))  # nothing extracted
    assert not (tmp_path / "evil.png").exists()


def test_refuses_symlinks(tmp_path):
    data = _zip({"votes.csv": b"image,dr_a\nimages/a.png,plus\n"}, symlinks={"images/a.png": "/etc/passwd"})
    with pytest.raises(InputError, match="symbolic link"):
        extract_dataset_zip(data, "link.zip", tmp_path / "datasets")


def test_lists_every_problem_at_once(tmp_path):
    data = _zip({"a.txt": b"", "../b.png": b"", "c.py": b""})
    with pytest.raises(InputError) as err:
        extract_dataset_zip(data, "many.zip", tmp_path / "datasets")
    assert len(err.value.problems) == 4  # three members + no votes.csv


def test_not_a_zip(tmp_path):
    with pytest.raises(InputError, match="not a zip"):
        extract_dataset_zip(b"hello", "x.zip", tmp_path / "datasets")


def test_upload_on_the_data_page(at, workspace, demo_src):
    at.run()
    at.switch_page("views/data.py").run()
    at.file_uploader(key="data_open_zip").upload("study.zip", _zip(_dataset_members(demo_src)), "application/zip")
    at.run()
    at.button(key="data_open_unzip").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert Path(at.session_state["dataset"]).is_relative_to(workspace / "datasets")
    assert {m.label: m.value for m in at.metric}["Images"] == "24"


def test_bad_upload_shows_problems_not_a_traceback(at, workspace):
    at.run()
    at.switch_page("views/data.py").run()
    at.file_uploader(key="data_open_zip").upload("bad.zip", _zip({"../x.png": b"", "votes.csv": b"image\n"}))
    at.run()
    at.button(key="data_open_unzip").click().run()
    assert not at.exception
    assert "1 problem" in at.error[0].value
    assert "outside the dataset folder" in at.dataframe[0].value["problem"].iloc[0]
