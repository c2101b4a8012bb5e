"""The DICOM adapter: photometric handling, windowing, 16->8 bit, frames, codecs, and that no patient field leaks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from engine.data.cache import ImageCache
from engine.data.dicom import missing_codec_reason, read_dicom_rgb
from engine.data.images import ImageReadError, load_rgb, verify

try:
    from tests.engine.data import conftest_images as H
except ImportError:  # tests/ not importable as a package: the helper sits next to this file
    import conftest_images as H

RAMP = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 16  # 0 .. 4080, 12-bit


def test_monochrome1_is_inverted(tmp_path):
    m2 = load_rgb(H.write_gray(tmp_path / "m2.dcm", RAMP, bits=12))
    m1 = load_rgb(H.write_gray(tmp_path / "m1.dcm", RAMP, bits=12, photometric="MONOCHROME1"))
    assert m2.shape == m1.shape == (16, 16, 3) and m1.dtype == np.uint8
    assert m2[0, 0, 0] == 0 and m2[-1, -1, 0] == 255  # min-max without a window
    assert m1[0, 0, 0] == 255 and m1[-1, -1, 0] == 0  # ordering flips
    assert (m1.astype(int) == 255 - m2).all()
    assert (m1[..., 0] == m1[..., 1]).all() and (m1[..., 1] == m1[..., 2]).all()


def test_monochrome2_16bit_window_is_applied_and_clips(tmp_path):
    centre, width = 2000, 1000  # window 1500..2500 of 0..4080
    out = load_rgb(H.write_gray(tmp_path / "w.dcm", RAMP, bits=12, window=(centre, width)))[..., 0].ravel()
    raw = RAMP.ravel()
    assert (out[raw < 1500] == 0).all() and (out[raw > 2500] == 255).all()
    inside = (raw > 1520) & (raw < 2480)
    assert (out[inside] > 0).all() and (out[inside] < 255).all()
    assert (np.diff(out.astype(int)) >= 0).all()
    assert abs(int(out[np.argmin(np.abs(raw.astype(int) - centre))]) - 128) <= 3  # centre -> mid grey


def test_window_is_in_rescaled_units(tmp_path):
    # stored 0..4080 -> rescaled -1000..3080; window 0..1000 in rescaled units == stored 1000..2000
    path = H.write_gray(tmp_path / "r.dcm", RAMP, bits=12, window=(500, 1000), rescale=(1, -1000))
    out = load_rgb(path)[..., 0].ravel()
    raw = RAMP.ravel()
    assert (out[raw < 1000] == 0).all() and (out[raw > 2000] == 255).all()


def test_rgb_and_ybr_full(tmp_path):
    rgb = H.gradient_rgb(16, 20)
    assert (load_rgb(H.write_color(tmp_path / "rgb.dcm", rgb)) == rgb).all()
    ybr = load_rgb(H.write_color(tmp_path / "ybr.dcm", rgb, photometric="YBR_FULL"))
    assert dcmread(tmp_path / "ybr.dcm").PhotometricInterpretation == "YBR_FULL"
    assert ybr.shape == (16, 20, 3) and np.abs(ybr.astype(int) - rgb).max() <= 2


def test_multiframe_returns_first_frame(tmp_path):
    rgb = H.gradient_rgb(12, 10)
    out = load_rgb(H.write_color(tmp_path / "mf.dcm", np.stack([rgb, 255 - rgb, rgb // 2])))
    assert out.shape == (12, 10, 3) and (out == rgb).all()
    frames = np.stack([RAMP, RAMP[::-1]]).astype(np.uint16)
    gray = load_rgb(H.write_gray(tmp_path / "mfg.dcm", frames, bits=12))
    assert gray[0, 0, 0] == 0 and gray[-1, -1, 0] == 255


def test_palette_color(tmp_path):
    path = H.write_gray(tmp_path / "pal.dcm", np.arange(16, dtype=np.uint8).reshape(4, 4))
    ds = dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    lut = (np.arange(256, dtype=np.uint16) * 257).astype("<u2")
    for k, data in enumerate((lut, lut[::-1].copy(), np.zeros(256, "<u2"))):  # red, green, blue
        ds.add_new(0x00281101 + k, "US", [256, 0, 16])  # descriptor: 256 entries, first index 0, 16 bits
        ds.add_new(0x00281201 + k, "OW", data.tobytes())
    ds.save_as(path)
    out = load_rgb(path)
    assert out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [0, 255, 0] and out[-1, -1].tolist() == [15, 240, 0]


def test_jpeg_baseline_dicom_decodes(tmp_path):
    if not get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG decoder plugin installed")
    rgb = H.gradient_rgb(32, 48)
    out = load_rgb(H.write_jpeg_baseline(tmp_path / "jpg.dcm", rgb))
    assert out.shape == (32, 48, 3) and np.abs(out.astype(int) - rgb).mean() < 3


def test_jpeg2000_dicom_decodes(tmp_path):
    rgb = H.gradient_rgb(64, 64)
    ds = dcmread(H.write_color(tmp_path / "src.dcm", rgb))
    try:
        ds.compress(JPEG2000Lossless)
    except Exception as err:  # encoder plugin missing or unable
        pytest.skip(f"cannot encode JPEG 2000 here: {err}")
    ds.save_as(tmp_path / "j2k.dcm")
    assert (load_rgb(tmp_path / "j2k.dcm") == rgb).all()


def test_missing_codec_names_the_package(tmp_path, monkeypatch):
    path = H.write_jpeg_baseline(tmp_path / "jpg.dcm", H.gradient_rgb(16, 16))
    decoder = get_decoder(JPEGBaseline8Bit)
    monkeypatch.setattr(decoder, "_available", {})  # as if no JPEG plugin were installed
    with pytest.raises(ImageReadError, match=r"jpg\.dcm: DICOM needs the 'pylibjpeg-libjpeg' package"):
        read_dicom_rgb(path)
    assert verify(path).startswith("DICOM needs the 'pylibjpeg-libjpeg' package")
    assert "pip install" in missing_codec_reason(JPEGBaseline8Bit)
    assert missing_codec_reason("1.2.840.10008.1.2.1") is None


def test_corrupt_truncated_and_pixelless_dicom(tmp_path):
    good = H.write_gray(tmp_path / "g.dcm", RAMP, bits=12)
    (tmp_path / "trunc.dcm").write_bytes(good.read_bytes()[:-200])
    assert verify(tmp_path / "trunc.dcm").startswith("not a readable DICOM file")
    (tmp_path / "junk.dcm").write_bytes(b"\x01\x02junk" * 50)
    assert verify(tmp_path / "junk.dcm").startswith("not a readable DICOM file")
    ds = dcmread(good)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    assert verify(tmp_path / "nopix.dcm").startswith("not a readable DICOM file")
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert verify(tmp_path / "empty.dcm") == "file is empty"


def test_no_patient_field_leaves_the_adapter(tmp_path, caplog, capsys, recwarn):
    caplog.set_level(logging.DEBUG)
    secrets = [H.SECRET_NAME, "SECRET", H.SECRET_ID, H.SECRET_INSTITUTION, "19991231", "20240102"]
    good = H.write_gray(tmp_path / "patient.dcm", RAMP, bits=12, window=(2000, 1000))
    assert H.SECRET_NAME.encode() in good.read_bytes()  # the secret really is in the file
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(good.read_bytes()[:-300])

    seen: list[str] = []
    arr = load_rgb(good)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8  # a plain array: nowhere to hide a header
    seen.append(repr(verify(good)))
    cache = ImageCache(tmp_path / "cache")
    seen.append(repr(cache.get(good, 8).shape))
    seen.append(repr(cache.load_many([good, good], 8, progress=lambda i, n: seen.append(f"{i}/{n}")).shape))
    seen.append(repr(verify(broken)))
    for call in (lambda: load_rgb(broken), lambda: cache.get(broken, 8)):
        with pytest.raises(ImageReadError) as info:
            call()
        err = info.value
        seen += [str(err), repr(err), repr(err.args), str(err.__cause__), str(err.__context__)]

    captured = capsys.readouterr()
    seen += [caplog.text, captured.out, captured.err, *(str(w.message) for w in recwarn)]
    text = "\n".join(seen)
    for secret in secrets:
        assert secret not in text
    cache_files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cache_files
    for p in cache_files:
        data = p.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, p
            assert secret.replace("^", " ").encode() not in data, p


def test_enhanced_multiframe_window_from_functional_groups(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = H.write_gray(tmp_path / "enh.dcm", np.stack([RAMP, RAMP]).astype(np.uint16), bits=12)
    ds = dcmread(path)
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 2000, 1000
    shared = Dataset()
    shared.FrameVOILUTSequence = Sequence([voi])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.save_as(path)
    out = load_rgb(path)[..., 0].ravel()
    raw = RAMP.ravel()
    assert (out[raw < 1500] == 0).all() and (out[raw > 2500] == 255).all()
