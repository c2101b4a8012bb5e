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
    assert not [f for f in (tmp_path / "c").rglob("*") if f.is_file() and f.suffix == ".tmp"]  # no temp files


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


@pytest.fixture
def hashed(monkeypatch):
    """Count sha256 computations (what the stat index saves on unchanged files)."""
    from engine.data import cache as cache_mod

    calls: list[str] = []
    real = cache_mod.file_sha256
    monkeypatch.setattr(cache_mod, "file_sha256", lambda p: calls.append(str(p)) or real(p))
    return calls


def test_load_many_reads_one_pack_without_decoding_or_hashing(tmp_path, counted, hashed):
    paths = [_png(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    first = ImageCache(tmp_path / "c").load_many(paths, 8)
    assert len(counted) == 5 and len(hashed) == 5
    packs = sorted((tmp_path / "c" / "packs").iterdir())
    assert [p.suffix for p in packs] == [".keys", ".npy"] and len(packs[0].read_text().split()) == 5
    counted.clear(), hashed.clear()
    again = ImageCache(tmp_path / "c")  # a new run over the same files
    assert (again.load_many(paths, 8) == first).all()
    assert counted == [] and hashed == [] and again.decode_count == 0


def test_an_edited_file_is_hashed_and_decoded_again_the_rest_comes_from_the_pack(tmp_path, counted, hashed):
    paths = [_png(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    ImageCache(tmp_path / "c").load_many(paths, 8)
    _png(paths[2], seed=99, shape=(41, 50))  # new content (and size) at the same path
    counted.clear(), hashed.clear()
    stack = ImageCache(tmp_path / "c").load_many(paths[::-1], 8)  # another order: another pack, same rows
    assert counted == [str(paths[2])] and hashed == [str(paths[2])]
    for i, p in enumerate(paths[::-1]):
        assert (stack[i] == resize_center_crop(load_rgb(p), 8)).all()


def test_a_corrupt_pack_is_rebuilt(tmp_path, counted):
    paths = [_png(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    good = ImageCache(tmp_path / "c").load_many(paths, 8)
    pack = next((tmp_path / "c" / "packs").glob("*.npy"))
    pack.write_bytes(pack.read_bytes()[:100])
    counted.clear()
    assert (ImageCache(tmp_path / "c").load_many(paths, 8) == good).all() and len(counted) == 3
    assert (np.load(pack) == good).all()


def test_validation_trusts_cached_images_and_a_cold_run_decodes_each_image_once(tmp_path, counted):
    paths = [_png(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    cold = ImageCache(tmp_path / "c", workers=2)
    cold.prefetch([*paths, bad], 8)  # decodes in a thread pool, writes nothing
    assert sorted(counted) == sorted(map(str, [*paths, bad])) and not (tmp_path / "c").exists()
    verify = cold.verifier(8)
    assert [verify(p) for p in paths] == [None] * 4 and "not a readable image" in verify(bad)
    counted.clear()
    cold.load_many(paths, 8)
    assert counted == []  # what validation decoded is used
    warm = ImageCache(tmp_path / "c").verifier(8)
    assert [warm(p) for p in paths] == [None] * 4 and counted == []  # cached: trusted without decoding
