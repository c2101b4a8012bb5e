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


VOTES = b"image,dr_a\nimages/a.png,plus\n"


def _set_central_sizes(data: bytes, name: str, *, file_size: int | None = None) -> bytes:
    """The zip with `name`'s uncompressed size in the central directory replaced: a header that lies."""
    import struct

    pos = data.index(b"PK\x01\x02")  # the first central directory entry
    while True:
        n = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46:pos + 46 + n].decode() == name:
            break
        pos = data.index(b"PK\x01\x02", pos + 4)
    return data[:pos + 24] + struct.pack("<I", file_size) + data[pos + 28:]


def _no_leftovers(datasets: Path) -> None:
    assert not datasets.exists() or not any(datasets.iterdir()), list(datasets.iterdir())


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("votes.csv", VOTES)
        with zf.open("images/a.png", "w") as fh:  # 64 MiB of zeros: ~64 kB compressed
            for _ in range(64):
                fh.write(bytes(2**20))
    data = buf.getvalue()
    assert len(data) < 2**20
    with pytest.raises(InputError, match=r"'images/a.png' unpacks to 64.0 MiB from .* more than 100x is refused") as e:
        extract_dataset_zip(data, "bomb.zip", tmp_path / "datasets")
    assert len(e.value.problems) == 1
    _no_leftovers(tmp_path / "datasets")


def test_a_1mb_zip_declaring_1gib_per_member_is_refused_on_total_and_ratio(tmp_path):
    members = {"votes.csv": VOTES, **{f"images/{i}.png": bytes(2**20) for i in range(10)}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # stored: ratio 1, so only the declared size lies
        for name, payload in members.items():
            zf.writestr(name, payload)
    data = buf.getvalue()
    for i in range(10):
        data = _set_central_sizes(data, f"images/{i}.png", file_size=2**30 - 1)
    with pytest.raises(InputError) as err:
        extract_dataset_zip(data, "big.zip", tmp_path / "datasets")
    text = str(err.value)
    assert "big.zip: unpacks to 10.0 GiB; an upload may unpack to at most 8.0 GiB" in text
    assert "'images/0.png' unpacks to 1024.0 MiB from 1.0 MiB" in text
    _no_leftovers(tmp_path / "datasets")


def test_a_member_whose_size_header_lies_is_a_clear_error_and_nothing_is_left(tmp_path):
    data = _zip({"votes.csv": VOTES, "images/a.png": b"p" * 1000, "images/b.png": b"q" * 10})
    data = _set_central_sizes(data, "images/a.png", file_size=10)  # says 10 bytes, holds 1000
    with pytest.raises(InputError, match=r"lie.zip: 'images/a.png' is damaged in the zip \(Bad CRC-32"):
        extract_dataset_zip(data, "lie.zip", tmp_path / "datasets")
    _no_leftovers(tmp_path / "datasets")


def test_a_name_that_is_both_a_file_and_a_folder_or_listed_twice_is_refused(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name it is told to write
        data = _zip({"votes.csv": VOTES, "scan.dcm/a.png": b"x", "scan.dcm": b"a file", "images/b.png": b"1"})
        buf = io.BytesIO(data)
        with zipfile.ZipFile(buf, "a") as zf:
            zf.writestr("images/b.png", b"2")
    with pytest.raises(InputError) as err:
        extract_dataset_zip(buf.getvalue(), "odd.zip", tmp_path / "datasets")
    assert [p.problem for p in err.value.problems] == [
        "'images/b.png' is in the zip 2 times",
        "'scan.dcm' is both a file and a folder in the zip",
    ]
    _no_leftovers(tmp_path / "datasets")
