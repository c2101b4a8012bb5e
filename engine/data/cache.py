"""Disk cache of decoded + resized images, so a second run never decodes again (DICOM decoding is slow).

Key: sha256 of the file bytes + target size + FORMAT_VERSION (so renaming or moving a file keeps its entry and
editing it invalidates it). Entries are plain .npy arrays of pixels only (nothing from DICOM headers), written
atomically; an unreadable or wrong-shaped entry is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from engine import atomic
from engine.data import images

# Bump when decoding or resizing changes, so old entries are not reused.
FORMAT_VERSION = 1


def file_sha256(path: os.PathLike | str) -> str:
    """Hex sha256 of a file's bytes (the one file hash of the engine: cache keys, export provenance)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class ImageCache:
    """`get(path, size) -> (size, size, 3) uint8`; entries live under `folder` (None = no disk cache).

    `decode_count` counts real decodes (cache misses) in this process, for tests and progress messages."""

    def __init__(self, folder: os.PathLike | str | None):
        self.folder = Path(folder) if folder is not None else None
        self.decode_count = 0

    def key(self, path: os.PathLike | str, size: int) -> str:
        """Cache key of `path` at `size`: depends on file bytes, size and FORMAT_VERSION only."""
        return f"{file_sha256(path)}-s{int(size)}-v{FORMAT_VERSION}"

    def entry_path(self, path: os.PathLike | str, size: int) -> Path | None:
        """Where the entry for `path` at `size` is (or would be) stored; None without a folder."""
        if self.folder is None:
            return None
        key = self.key(path, size)
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, path: os.PathLike | str, size: int) -> np.ndarray:
        """Decoded, resized, centre-cropped image (size, size, 3) uint8, from the cache when present.

        Raises ImageReadError when the file cannot be decoded (nothing is cached then)."""
        path = Path(path)
        size = int(size)
        try:
            entry = self.entry_path(path, size)
        except FileNotFoundError:
            raise images.ImageReadError(path, "file not found") from None
        except OSError:
            raise images.ImageReadError(path, "file cannot be read") from None
        if entry is not None:
            cached = _read_entry(entry, size)
            if cached is not None:
                return cached
        img = images.resize_center_crop(images.load_rgb(path), size)
        self.decode_count += 1
        if entry is not None:
            buf = io.BytesIO()
            np.save(buf, img, allow_pickle=False)
            atomic.write_bytes(entry, buf.getvalue())
        return img

    def load_many(
        self,
        paths: Sequence[os.PathLike | str],
        size: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Stack of images (N, size, size, 3) uint8 in the order of `paths`.

        `progress(done, n)` is called after each image (done = 1..n); without it a tqdm bar shows on a terminal."""
        n = len(paths)
        out = np.empty((n, int(size), int(size), 3), dtype=np.uint8)
        bar = None
        if progress is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="images", unit="img", disable=None, leave=False)
        try:
            for i, p in enumerate(paths):
                out[i] = self.get(p, size)
                if progress is not None:
                    progress(i + 1, n)
                else:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return out


def _read_entry(entry: Path, size: int) -> np.ndarray | None:
    """The cached array, or None when missing, unreadable or of the wrong shape/dtype (then it is rebuilt)."""
    try:
        arr = np.load(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.shape != (size, size, 3) or arr.dtype != np.uint8:
        return None
    return arr
