"""Atomic file writes (temp file in the same folder + rename) so readers never see half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path | str, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_with(path: Path | str, write: Callable[[BinaryIO], None]) -> Path:
    """Atomically write a file by streaming into it: `write(binary file handle)` (e.g. `np.save(fh, array)`)."""

    def stream(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    return _atomic(path, stream)


def write_bytes(path: Path | str, data: bytes) -> Path:
    return _atomic(path, lambda p: p.write_bytes(data))


def write_text(path: Path | str, text: str) -> Path:
    return _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: Path | str, frame) -> Path:
    """Write a pandas DataFrame as UTF-8 CSV without the index. Every CSV the tool writes goes through here, so
    text cells that a spreadsheet would run as a formula are neutralised here, once (`engine.csv_cells`), and
    rows end in CRLF."""
    from engine.csv_cells import neutralise_frame

    safe = neutralise_frame(frame)
    # CRLF rows (RFC 4180): the csv writer then quotes every cell holding a CR or LF. With "\n" rows a lone CR
    # inside a note went out unquoted, and a spreadsheet starts a new row there, so "x\r=1+1" injected a formula.
    return _atomic(path, lambda p: safe.to_csv(p, index=False, encoding="utf-8", lineterminator="\r\n"))


def torch_save(path: Path | str, obj: Any) -> Path:
    import torch

    return _atomic(path, lambda p: torch.save(obj, p))


def append_jsonl(path: Path | str, record: dict) -> None:
    """Append one JSON line; a single write() of a short line, flushed, so a reader sees whole lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
        fh.flush()
