"""The one DICOM adapter: file -> RGB uint8 (H, W, 3), first frame, LUTs/window applied, 16 -> 8 bit.

Privacy by construction: pydicom is asked for the pixel data plus the image-pixel group (0028) and the few
presentation tags listed below only, so patient, study and institution fields are never parsed into memory,
never returned, and never appear in exceptions or warnings (pydicom's own messages are swallowed).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from engine.data.images import ImageReadError, has_dicom_marker

# Tags read besides pydicom's image-pixel group 0028 (which holds window, rescale, VOI/modality/palette LUTs).
_EXTRA_TAGS = [
    0x20500020,  # Presentation LUT Shape (INVERSE flips grey levels)
    0x52009229,  # Shared Functional Groups Sequence (enhanced multi-frame window/rescale)
    0x52009230,  # Per-frame Functional Groups Sequence
]

_INSTALL_LIBJPEG = "pylibjpeg-libjpeg", "pip install pylibjpeg pylibjpeg-libjpeg"
_INSTALL_OPENJPEG = "pylibjpeg-openjpeg", "pip install pylibjpeg pylibjpeg-openjpeg"
_INSTALL_RLE = "pylibjpeg-rle", "pip install pylibjpeg pylibjpeg-rle"

# transfer syntax UID -> (package that decodes it, install command)
CODEC_PACKAGES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.4.50": _INSTALL_LIBJPEG,  # JPEG Baseline 8-bit
    "1.2.840.10008.1.2.4.51": _INSTALL_LIBJPEG,  # JPEG Extended 12-bit
    "1.2.840.10008.1.2.4.57": _INSTALL_LIBJPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _INSTALL_LIBJPEG,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _INSTALL_LIBJPEG,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _INSTALL_LIBJPEG,  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": _INSTALL_OPENJPEG,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _INSTALL_OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _INSTALL_OPENJPEG,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _INSTALL_OPENJPEG,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _INSTALL_OPENJPEG,  # HTJ2K
    "1.2.840.10008.1.2.5": _INSTALL_RLE,  # RLE Lossless (pydicom also has a native decoder)
}

_IMPLICIT_VR_LE = "1.2.840.10008.1.2"


def missing_codec_reason(transfer_syntax: str) -> str | None:
    """None when pydicom can decode `transfer_syntax`, else a short reason naming the package to install."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(transfer_syntax))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"DICOM transfer syntax '{uid.name}' is not supported"
    if decoder.is_available:
        return None
    package, command = CODEC_PACKAGES.get(str(uid), ("pylibjpeg", "pip install pylibjpeg"))
    return f"DICOM needs the '{package}' package to decode '{uid.name}' ({command})"


def _decode_first_frame(path: Path):
    """-> (raw first frame (H, W) or (H, W, 3), dataset holding group 0028 + _EXTRA_TAGS only)."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import pixel_array

    ds = Dataset()
    try:
        arr = pixel_array(path, ds_out=ds, specific_tags=_EXTRA_TAGS, index=0)
    except AttributeError as err:
        if "transfer_syntax_uid" not in str(err):
            raise
        # a bare dataset without the DICOM file meta: the standard default encoding
        ds = Dataset()
        arr = pixel_array(path, ds_out=ds, specific_tags=_EXTRA_TAGS, index=0, transfer_syntax_uid=_IMPLICIT_VR_LE)
    return arr, ds


def _copy_functional_group_voi(ds) -> None:
    """Enhanced multi-frame objects keep window/rescale in functional groups: lift frame 0's to the top level."""
    groups = []
    for keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(keyword)
        if seq:
            groups.append(seq[0])
    for group in groups:
        if "WindowCenter" not in ds and group.get("FrameVOILUTSequence"):
            item = group.FrameVOILUTSequence[0]
            if "WindowCenter" in item and "WindowWidth" in item:
                ds.WindowCenter, ds.WindowWidth = item.WindowCenter, item.WindowWidth
                if "VOILUTFunction" in item:
                    ds.VOILUTFunction = item.VOILUTFunction
        if "RescaleSlope" not in ds and group.get("PixelValueTransformationSequence"):
            item = group.PixelValueTransformationSequence[0]
            if "RescaleSlope" in item and "RescaleIntercept" in item:
                ds.RescaleSlope, ds.RescaleIntercept = item.RescaleSlope, item.RescaleIntercept


def _gray_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    """Monochrome frame -> (H, W) uint8: modality LUT/rescale, VOI LUT or window, then 8-bit scaling.

    With a window the window maps onto 0..255 (values outside clip, as in a viewer); otherwise min-max."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _copy_functional_group_voi(ds)
    has_modality = bool(ds.get("ModalityLUTSequence")) or ("RescaleSlope" in ds and "RescaleIntercept" in ds)
    has_voi_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    raw_dtype = arr.dtype
    values = apply_modality_lut(arr, ds) if has_modality else arr
    if has_voi_lut or has_window:
        values = apply_voi_lut(values, ds)
    if has_window and not has_voi_lut:
        # the window's output range: what the window maps -inf/+inf to
        with np.errstate(over="ignore", invalid="ignore"):
            bounds = apply_voi_lut(np.array([-1e30, 1e30], dtype=np.float64), ds)
        lo, hi = float(np.min(bounds)), float(np.max(bounds))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            scaled = (np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo))
            return np.round(np.clip(scaled, 0, 255)).astype(np.uint8)
    if raw_dtype == np.uint8 and not (has_modality or has_voi_lut or has_window):
        return np.asarray(values, dtype=np.uint8)
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _color_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    """Colour frame (H, W, 3) of 8 or 16 bits -> uint8 by the stored bit depth (keeps colour balance)."""
    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored") or 8 * arr.dtype.itemsize)
    top = float(2**bits - 1)
    scaled = np.asarray(arr, dtype=np.float64) * (255.0 / top)
    return np.round(np.clip(scaled, 0, 255)).astype(np.uint8)


def _to_rgb(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)[..., :3]
        if rgb.dtype != np.uint8:  # 16-bit palette entries span 0..65535
            rgb = np.round(rgb.astype(np.float64) / 257.0).astype(np.uint8)
        return np.ascontiguousarray(rgb)
    if arr.ndim == 3:
        # pixel_array(raw=False) already converted YBR_FULL / YBR_FULL_422 (and the JPEG decoders YCbCr) to RGB
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        else:
            return np.ascontiguousarray(_color_to_uint8(arr[:, :, :3], ds))
    if arr.ndim != 2:
        raise ValueError("unexpected pixel array shape")
    gray = _gray_to_uint8(arr, ds)
    inverse = str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
    if (photometric == "MONOCHROME1") != inverse:
        gray = 255 - gray
    return np.repeat(gray[:, :, None], 3, axis=2)


def read_dicom_rgb(path: os.PathLike | str) -> np.ndarray:
    """Decode the first frame of a DICOM file to RGB uint8 (H, W, 3). Raises ImageReadError naming the file
    and a reason (never a header value); a compressed file without its codec names the package to install."""
    path = Path(path)
    # errors are raised outside the `except` blocks so no pydicom exception rides along as __context__
    reason = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings can quote element values
        try:
            arr, ds = _decode_first_frame(path)
        except FileNotFoundError:
            reason = "file not found"
        except Exception:
            reason = _decode_failure_reason(path)
        if reason is None:
            try:
                rgb = _to_rgb(arr, ds)
            except Exception:
                reason = "DICOM pixel data could not be converted to RGB (unsupported layout)"
    if reason is not None:
        raise ImageReadError(path, reason)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(path, "DICOM has an empty or malformed image")
    return rgb


def _decode_failure_reason(path: Path) -> str:
    """Why decoding failed, in words and without header values: missing codec, no pixel data, or corrupt."""
    from pydicom import dcmread

    try:
        # file meta only (group 0002); the dataset itself is not parsed
        meta = dcmread(path, force=True, stop_before_pixels=True, specific_tags=[0x00080016]).file_meta
        syntax = meta.get("TransferSyntaxUID")
    except Exception:
        syntax = None
    if syntax:
        reason = missing_codec_reason(str(syntax))
        if reason:
            return reason
    elif not has_dicom_marker(path):
        return "not a readable DICOM file"
    return "not a readable DICOM file (corrupt, truncated or without pixel data)"

