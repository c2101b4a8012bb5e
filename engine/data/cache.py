"""Disk cache of decoded + resized images, so a second run neither decodes nor re-reads one file per image.

Everything is keyed by content: sha256 of the file bytes + target size + FORMAT_VERSION, so renaming or moving a
file keeps its entry and editing it invalidates it. Three parts, all inside the cache folder:
- **packs**: `packs/s<size>-v<V>-<digest>.npy`, one (N, size, size, 3) uint8 array for a list of images (digest =
  sha256 of their keys in order), with the key of each row in `<same name>.keys`. `load_many` of the same images
  reads one file; rows of any pack are reused when the list changes. The `MAX_PACKS` most recent packs of a size
  are kept.
- **entries**: `xx/<key>.npy`, one image each, written by `get` (and by earlier versions of the engine); read as
  a fallback.
- **stat index**: `stat-index.json`, path -> [size, mtime_ns, sha256], so unchanged files are not hashed again
  (as git's index does); a file whose size or modification time changed is hashed anew.
Arrays hold pixels only (nothing from DICOM headers) and are written atomically; an unreadable or wrong-shaped file
is ignored and rebuilt. Images that must be decoded are decoded by a thread pool (Pillow and pydicom release the
GIL). `prefetch` + `verifier` let validation trust a cached image instead of decoding it, and keep what validation
decoded for `load_many`, so a cold run decodes each image once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine import atomic
from engine.data import images

# Bump when decoding or resizing changes, so old entries are not reused.
FORMAT_VERSION = 1
MAX_PACKS = 3  # packs kept per image size (most recently used)
STAT_INDEX = "stat-index.json"


def file_sha256(path: os.PathLike | str) -> str:
    """Hex sha256 of a file's bytes (the one file hash of the engine: cache keys, export provenance)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class ImageCache:
    """Decoded, resized images by content; `folder=None` keeps nothing on disk.

    `decode_count` counts real decodes (cache misses) in this process, for tests and progress messages."""

    def __init__(self, folder: os.PathLike | str | None, *, workers: int | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.workers = workers or min(32, (os.cpu_count() or 1))
        self.decode_count = 0
        self._stat = self._read_stat_index()
        self._stat_dirty = False
        self._fresh: dict[str, np.ndarray] = {}  # key -> image decoded by prefetch/verifier, not yet stored
        self._bad: dict[str, str] = {}  # path -> why it cannot be decoded
        self._pack_rows: dict[int, dict[str, tuple[Path, int]]] = {}  # size -> key -> (pack, row)
        self._mapped: dict[Path, np.ndarray | None] = {}  # pack -> memory-mapped array

    # --- keys ---------------------------------------------------------------------------------------------
    def sha256(self, path: os.PathLike | str) -> str:
        """sha256 of the file, from the stat index when its size and modification time are unchanged."""
        path = Path(path)
        st = path.stat()
        name = os.path.abspath(path)
        known = self._stat.get(name)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            return known[2]
        digest = file_sha256(path)
        self._stat[name] = [st.st_size, st.st_mtime_ns, digest]
        self._stat_dirty = True
        return digest

    def key(self, path: os.PathLike | str, size: int) -> str:
        """Cache key of `path` at `size`: depends on file bytes, size and FORMAT_VERSION only."""
        return _key(self.sha256(path), size)

    def entry_path(self, path: os.PathLike | str, size: int) -> Path | None:
        """Where the single-image entry for `path` at `size` is (or would be) stored; None without a folder."""
        if self.folder is None:
            return None
        key = self.key(path, size)
        return self.folder / key[:2] / f"{key}.npy"

    # --- one image ----------------------------------------------------------------------------------------
    def get(self, path: os.PathLike | str, size: int) -> np.ndarray:
        """Decoded, resized, centre-cropped image (size, size, 3) uint8, from the cache when present.

        Raises ImageReadError when the file cannot be decoded (nothing is cached then)."""
        path, size = Path(path), int(size)
        key = self._safe_key(path, size)
        found = self._lookup(key, size)
        if found is not None:
            return found
        img = self._decode(path, size)
        if self.folder is not None:
            _write_array(self.folder / key[:2] / f"{key}.npy", img)
        self._save_stat_index()
        return img

    # --- validation ---------------------------------------------------------------------------------------
    def prefetch(self, paths: Sequence[os.PathLike | str], size: int) -> None:
        """Hash `paths` (stat index first) and decode, in a thread pool, those not cached at `size`; decoded images
        are kept for `load_many`, failures for `verifier`. Unreadable files are not an error here; nothing is
        written (validation must leave no trace when it fails)."""
        size = int(size)
        todo = []
        for p in paths:
            try:
                key = self._safe_key(Path(p), size)
            except images.ImageReadError as err:
                self._bad[str(p)] = err.reason
                continue
            if key not in self._fresh and not self._cached(key, size):
                todo.append((Path(p), key))
        for (p, key), (img, reason) in zip(todo, self._decode_many([p for p, _ in todo], size), strict=True):
            if reason is None:
                self._fresh[key] = img
            else:
                self._bad[str(p)] = reason

    def verifier(self, size: int) -> Callable[[Path], str | None]:
        """`verify(path) -> None | reason` for `read_votes(check_images=...)`: a file whose content is cached (or
        was just decoded by `prefetch`) decoded before and is trusted; others are decoded now and kept."""
        size = int(size)

        def verify(path: Path) -> str | None:
            if str(path) in self._bad:
                return self._bad[str(path)]
            try:
                key = self._safe_key(Path(path), size)
                if key in self._fresh or self._cached(key, size):
                    return None
                self._fresh[key] = self._decode(Path(path), size)
            except images.ImageReadError as err:
                return err.reason
            except MemoryError:
                return "image too large to decode"
            return None

        return verify

    # --- many images --------------------------------------------------------------------------------------
    def load_many(
        self,
        paths: Sequence[os.PathLike | str],
        size: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Stack of images (N, size, size, 3) uint8 in the order of `paths`.

        `progress(done, n)` is called as images arrive (done = 1..n); without it a tqdm bar shows on a terminal.
        Raises ImageReadError for the first file that cannot be decoded."""
        size, n = int(size), len(paths)
        keys = [self._safe_key(Path(p), size) for p in paths]
        bar = _Progress(n, progress)
        pack = self._pack_path(keys, size)
        if pack is not None and pack.is_file():
            out = _read_array(pack, (n, size, size, 3))
            if out is not None:
                os.utime(pack)  # most recently used
                bar.update(n)
                bar.close()
                self._save_stat_index()
                return out
        out = np.empty((n, size, size, 3), dtype=np.uint8)
        missing = []
        for i, key in enumerate(keys):
            img = self._fresh.pop(key, None)
            if img is None:
                img = self._lookup(key, size, keep=False)
            if img is None:
                missing.append(i)
            else:
                out[i] = img
                bar.update(1)
        for i, (img, reason) in zip(missing, self._decode_many([Path(paths[i]) for i in missing], size), strict=True):
            if reason is not None:
                bar.close()
                raise images.ImageReadError(paths[i], reason)
            out[i] = img
            bar.update(1)
        bar.close()
        if pack is not None and n:
            self._write_pack(pack, keys, out)
        self._save_stat_index()
        return out

    # --- internals ----------------------------------------------------------------------------------------
    def _safe_key(self, path: Path, size: int) -> str:
        try:
            return self.key(path, size)
        except FileNotFoundError:
            raise images.ImageReadError(path, "file not found") from None
        except OSError:
            raise images.ImageReadError(path, "file cannot be read") from None

    def _decode(self, path: Path, size: int) -> np.ndarray:
        img = images.resize_center_crop(images.load_rgb(path), size)
        self.decode_count += 1
        return img

    def _decode_many(self, paths: list[Path], size: int) -> list[tuple[np.ndarray | None, str | None]]:
        def one(p: Path):
            try:
                return images.resize_center_crop(images.load_rgb(p), size), None
            except images.ImageReadError as err:
                return None, err.reason
            except MemoryError:
                return None, "image too large to decode"

        if not paths:
            return []
        if len(paths) == 1 or self.workers == 1:
            results = [one(p) for p in paths]
        else:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                results = list(pool.map(one, paths))
        self.decode_count += sum(r[1] is None for r in results)
        return results

    def _cached(self, key: str, size: int) -> bool:
        if self.folder is None:
            return False
        return key in self._rows(size) or (self.folder / key[:2] / f"{key}.npy").is_file()

    def _lookup(self, key: str, size: int, keep: bool = True) -> np.ndarray | None:
        """The cached image for `key` (validation's decode, a pack row, or a single entry), or None."""
        if key in self._fresh:
            return self._fresh[key] if keep else self._fresh.pop(key)
        if self.folder is None:
            return None
        where = self._rows(size).get(key)
        if where is not None:
            if where[0] not in self._mapped:
                self._mapped[where[0]] = _read_array(where[0], None, mmap=True)
            arr = self._mapped[where[0]]
            if arr is not None and arr.shape[1:] == (size, size, 3) and where[1] < len(arr):
                return np.array(arr[where[1]])
        return _read_array(self.folder / key[:2] / f"{key}.npy", (size, size, 3))

    def _packs(self, size: int) -> list[Path]:
        folder = self.folder / "packs" if self.folder is not None else None
        if folder is None or not folder.is_dir():
            return []
        return sorted(folder.glob(f"s{size}-v{FORMAT_VERSION}-*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)

    def _rows(self, size: int) -> dict[str, tuple[Path, int]]:
        if size not in self._pack_rows:
            rows: dict[str, tuple[Path, int]] = {}
            for pack in reversed(self._packs(size)):  # newer packs win
                try:
                    keys = pack.with_suffix(".keys").read_text(encoding="utf-8").split()
                except OSError:
                    continue
                rows.update({k: (pack, i) for i, k in enumerate(keys)})
            self._pack_rows[size] = rows
        return self._pack_rows[size]

    def _pack_path(self, keys: list[str], size: int) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]
        return self.folder / "packs" / f"s{size}-v{FORMAT_VERSION}-{digest}.npy"

    def _write_pack(self, pack: Path, keys: list[str], out: np.ndarray) -> None:
        """Write the pack (keys file first: a pack without its keys is never used), then keep the newest few."""
        atomic.write_text(pack.with_suffix(".keys"), "\n".join(keys) + "\n")
        _write_array(pack, out)
        self._mapped.clear()
        for old in self._packs(int(out.shape[1]))[MAX_PACKS:]:
            old.unlink(missing_ok=True)
            old.with_suffix(".keys").unlink(missing_ok=True)
        self._pack_rows.pop(int(out.shape[1]), None)

    def _read_stat_index(self) -> dict[str, list]:
        if self.folder is None:
            return {}
        try:
            data = json.loads((self.folder / STAT_INDEX).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_stat_index(self) -> None:
        if self.folder is not None and self._stat_dirty:
            atomic.write_json(self.folder / STAT_INDEX, self._stat)
            self._stat_dirty = False


def _key(sha: str, size: int) -> str:
    return f"{sha}-s{int(size)}-v{FORMAT_VERSION}"


def _write_array(path: Path, arr: np.ndarray) -> None:
    atomic.write_with(path, lambda fh: np.save(fh, arr, allow_pickle=False))


def _read_array(path: Path, shape: tuple | None, *, mmap: bool = False) -> np.ndarray | None:
    """The array in `path`, or None when missing, unreadable or not uint8 of `shape` (then it is rebuilt)."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError):
        return None
    if arr.dtype != np.uint8 or (shape is not None and arr.shape != shape):
        return None
    return arr


class _Progress:
    """`progress(done, n)` callback, or a tqdm bar on a terminal."""

    def __init__(self, n: int, callback: Callable[[int, int], None] | None):
        self.n, self.done, self.callback, self.bar = n, 0, callback, None
        if callback is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n, desc="images", unit="img", disable=None, leave=False)

    def update(self, k: int) -> None:
        for _ in range(k):
            self.done += 1
            if self.callback is not None:
                self.callback(self.done, self.n)
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
