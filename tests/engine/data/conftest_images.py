"""Helpers that write tiny DICOM files with pydicom for the image/DICOM/cache tests (imported explicitly)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

SECRET_NAME = "SECRET^NAME"
SECRET_ID = "SECRETID-4711"
SECRET_INSTITUTION = "SECRET HOSPITAL"


def _base(path: Path, *, transfer_syntax=ExplicitVRLittleEndian) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path.name)])
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.PatientBirthDate = "19991231"
    ds.StudyDate = "20240102"
    ds.InstitutionName = SECRET_INSTITUTION
    ds.ReferringPhysicianName = "SECRET^DOCTOR"
    ds.Modality = "OP"
    return ds


def write_gray(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits: int | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
) -> Path:
    """Write (H, W) or (F, H, W) uint8/uint16 pixels as a monochrome DICOM (optionally windowed/rescaled)."""
    path = Path(path)
    pixels = np.ascontiguousarray(pixels)
    ds = _base(path)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    alloc = 8 * pixels.dtype.itemsize
    ds.BitsAllocated = alloc
    ds.BitsStored = bits or alloc
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_color(path: Path, rgb: np.ndarray, *, photometric: str = "RGB") -> Path:
    """Write (H, W, 3) or (F, H, W, 3) uint8 as an uncompressed RGB or YBR_FULL DICOM (converted here)."""
    from pydicom.pixels import convert_color_space

    path = Path(path)
    data = np.ascontiguousarray(rgb)
    if photometric == "YBR_FULL":
        data = np.ascontiguousarray(convert_color_space(data, "RGB", "YBR_FULL"))
    ds = _base(path)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = data.shape[-3:-1]
    if data.ndim == 4:
        ds.NumberOfFrames = data.shape[0]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = data.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_jpeg_baseline(path: Path, rgb: np.ndarray, *, quality: int = 95) -> Path:
    """Write (H, W, 3) uint8 as a JPEG Baseline (YBR_FULL_422) DICOM: Pillow encodes, pydicom encapsulates."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    path = Path(path)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=0)
    ds = _base(path, transfer_syntax=JPEGBaseline8Bit)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient_rgb(h: int = 24, w: int = 32) -> np.ndarray:
    """A smooth (h, w, 3) uint8 test image with distinct R, G, B ramps."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    b = np.full((h, w), 128, dtype=np.uint8)
    return np.stack([r, g, b], axis=2)
