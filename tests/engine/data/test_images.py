"""Pillow ingest (PNG/JPEG/TIFF/BMP, RGBA, grey, 16-bit, palette), verify() reasons, resize/centre-crop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    is_image_file,
    load_rgb,
    resize_center_crop,
    verify,
)
from engine.data.votes import read_votes
from engine.errors import InputError

try:
    from tests.engine.data.conftest_images import gradient_rgb, write_gray
except ImportError:  # tests/ not importable as a package: the helper sits next to this file
    from conftest_images import gradient_rgb, write_gray


@pytest.mark.parametrize(
    ("ext", "fmt", "lossless"),
    [
        (".png", "PNG", True),
        (".jpg", "JPEG", False),
        (".tif", "TIFF", True),
        (".bmp", "BMP", True),
    ],
)
def test_rgb_formats_decode_to_hw3_uint8(tmp_path, ext, fmt, lossless):
    rgb = gradient_rgb(24, 32)
    path = tmp_path / f"img{ext}"
    Image.fromarray(rgb).save(path, format=fmt)
    out = load_rgb(path)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - rgb).max()
    assert diff == 0 if lossless else diff < 20


def test_rgba_composited_on_black(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :4, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    assert out.shape == (8, 8, 3)
    assert (out[:, :4] == (200, 100, 50)).all() and (out[:, 4:] == 0).all()


def test_grayscale_and_palette_become_three_equal_or_expanded_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = load_rgb(tmp_path / "g.png")
    assert out.shape == (8, 8, 3) and (out == gray[..., None]).all()

    pal = Image.fromarray(gradient_rgb(8, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    out = load_rgb(tmp_path / "p.png")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out == np.asarray(pal.convert("RGB"))).all()


def test_16bit_png_min_max_scaled_keeping_order(tmp_path):
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 700 + 1000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_rgb(tmp_path / "g16.png")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    flat = out[..., 0].ravel()
    assert flat[0] == 0 and flat[-1] == 255 and (np.diff(flat.astype(int)) >= 0).all()


def test_is_image_file(tmp_path):
    assert set(IMAGE_EXTENSIONS) >= {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}
    assert is_image_file("x/IMG.PNG") and is_image_file("a.dcm") and not is_image_file("votes.csv")
    dicom_no_ext = write_gray(tmp_path / "IM0001.dcm", np.zeros((4, 4), np.uint8)).rename(tmp_path / "IM0001")
    assert is_image_file(dicom_no_ext) and load_rgb(dicom_no_ext).shape == (4, 4, 3)


def test_verify_reasons(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(gradient_rgb(64, 64)).save(good)
    assert verify(good) is None

    assert verify(tmp_path / "missing.png") == "file not found"
    (tmp_path / "empty.png").write_bytes(b"")
    assert verify(tmp_path / "empty.png") == "file is empty"

    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # incompressible
    Image.fromarray(noisy).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    assert "not a readable image" in verify(tmp_path / "trunc.png")
    Image.fromarray(noisy).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    assert "not a readable image" in verify(tmp_path / "trunc.jpg")
    (tmp_path / "junk.png").write_bytes(b"this is not a png at all")
    assert "not a readable image" in verify(tmp_path / "junk.png")


def test_an_image_above_the_pixel_limit_is_reported_as_too_large(tmp_path, make_votes):
    """A 20000 × 20000 PNG (400 megapixels, 49 kB as a 1-bit image) is not "truncated or corrupt"."""
    Image.new("1", (20_000, 20_000)).save(tmp_path / "big.png")
    reason = verify(tmp_path / "big.png")
    assert reason == ("image is too large (400.0 megapixels): the limit is 89.5 megapixels (about 9459 × 9459 px, "
                      "Pillow's guard against decompression bombs); downscale it")
    # between the limit and twice the limit Pillow only warns: refused the same way, not decoded
    Image.new("1", (10_000, 10_000)).save(tmp_path / "large.png")
    assert verify(tmp_path / "large.png").startswith("image is too large (100.0 megapixels): the limit is 89.5")
    root = make_votes(tmp_path / "ds", ["image", "a"], [["big.png", "n"]], images=False)
    (root / "big.png").write_bytes((tmp_path / "big.png").read_bytes())
    with pytest.raises(InputError, match=r"row 1: image 'big.png': image is too large \(400.0 megapixels\)"):
        read_votes(root)


def test_image_read_error_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match="broken.png: not a readable image") as info:
        load_rgb(path)
    assert info.value.path == str(path) and info.value.reason.startswith("not a readable image")


def test_resize_center_crop_shapes_and_centre():
    rng = np.random.default_rng(0)
    square = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    # shorter side is already round(224*256/224) = 256: no resize, a pure centre crop
    assert (resize_center_crop(square, 224) == square[16:240, 16:240]).all()
    for h, w in [(300, 400), (400, 300), (20, 30), (224, 1000)]:
        out = resize_center_crop(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), 224)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    # a centred bright square stays centred
    img = np.zeros((300, 500, 3), np.uint8)
    img[140:160, 240:260] = 255
    out = resize_center_crop(img, 32)
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert abs(ys.mean() - 15.5) < 1.5 and abs(xs.mean() - 15.5) < 1.5
    with pytest.raises(ValueError, match="uint8"):
        resize_center_crop(np.zeros((4, 4), np.uint8), 2)
