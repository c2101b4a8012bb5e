"""ImageCache: hits skip decoding, keys follow file bytes, corrupt entries are rebuilt, load_many stacks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.data import images
from engine.data.cache import FORMAT_VERSION, ImageCache
from engine.data.images import ImageReadError, load_rgb, resize_center_crop

try:
    from tests.engine.data.conftest_images import gradient_rgb
except ImportError:  # tests/ not importable as a package: the helper sits next to this file
    from conftest_images import gradient_rgb


@pytest.fixture
def counted(monkeypatch):
    """Count real decodes by wrapping images.load_rgb (what the cache calls on a miss)."""
    calls: list[str] = []
    real = images.load_rgb

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(images, "load_rgb", counting)
    return calls


def _png(path, seed=0, shape=(40, 50)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)
    return path


def test_hit_avoids_decoding_across_instances(tmp_path, counted):
    p = _png(tmp_path / "a.png")
    first = ImageCache(tmp_path / "c").get(p, 16)
    assert first.shape == (16, 16, 3) and first.dtype == np.uint8
    assert (first == resize_center_crop(load_rgb(p), 16)).all()
    counted.clear()
    again = ImageCache(tmp_path / "c")  # a new run
    assert (again.get(p, 16) == first).all() and counted == [] and again.decode_count == 0
    again.get(p, 24)  # another size is another entry
    assert len(counted) == 1
    assert not [f for f in (tmp_path / "c").rglob("*") if f.is_file() and f.suffix != ".npy"]  # no temp files


def test_key_follows_bytes_not_path(tmp_path):
    cache = ImageCache(tmp_path / "c")
    a = _png(tmp_path / "a.png", seed=0)
    copy = tmp_path / "sub" / "copy.png"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    assert cache.key(a, 16) == cache.key(copy, 16)
    assert cache.key(a, 16) != cache.key(a, 32)
    assert cache.key(a, 16).endswith(f"-v{FORMAT_VERSION}")
    before = cache.key(a, 16)
    _png(a, seed=1)  # new content at the same path
    assert cache.key(a, 16) != before


def test_corrupt_or_wrong_entry_is_rebuilt(tmp_path, counted):
    p = _png(tmp_path / "a.png")
    cache = ImageCache(tmp_path / "c")
    good = cache.get(p, 16)
    entry = cache.entry_path(p, 16)
    for bad in (b"garbage", entry.read_bytes()[:60]):
        entry.write_bytes(bad)
        counted.clear()
        assert (cache.get(p, 16) == good).all() and len(counted) == 1
        assert (np.load(entry) == good).all()  # rewritten
    np.save(entry, np.zeros((3, 3), np.uint8))  # wrong shape
    counted.clear()
    assert (cache.get(p, 16) == good).all() and len(counted) == 1


def test_load_many_order_progress_and_no_folder(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    ticks = []
    stack = ImageCache(tmp_path / "c").load_many(paths, 8, progress=lambda i, n: ticks.append((i, n)))
    assert stack.shape == (3, 8, 8, 3) and stack.dtype == np.uint8
    assert ticks == [(1, 3), (2, 3), (3, 3)]
    for i, p in enumerate(paths):
        assert (stack[i] == resize_center_crop(load_rgb(p), 8)).all()
    plain = ImageCache(None)
    assert (plain.load_many(paths, 8) == stack).all() and plain.decode_count == 3
    assert ImageCache(None).load_many([], 8).shape == (0, 8, 8, 3)


def test_unreadable_file_raises_and_caches_nothing(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    cache = ImageCache(tmp_path / "c")
    with pytest.raises(ImageReadError, match="bad.png"):
        cache.get(bad, 8)
    with pytest.raises(ImageReadError, match="file not found"):
        cache.get(tmp_path / "missing.png", 8)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.npy"))
    good = tmp_path / "g.png"
    Image.fromarray(gradient_rgb()).save(good)
    assert cache.get(good, 8).shape == (8, 8, 3)
