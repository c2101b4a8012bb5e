"""Image ingest: any supported file -> RGB uint8 (H, W, 3); `verify` for validation; the 256->224 resize/crop.

PNG/JPEG/TIFF/BMP go through Pillow, DICOM through the one adapter in `engine/data/dicom.py`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Extensions the dataset reader accepts (lower case). Files without an extension are accepted when they carry
# the DICOM "DICM" marker (many PACS exports have no extension).
PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = PIL_EXTENSIONS + DICOM_EXTENSIONS

RESIZE_RATIO = 256 / 224  # ROP paper: resize the shorter side to 256, centre-crop 224


class ImageReadError(ValueError):
    """An image file that cannot be decoded. `str()` names the file and the reason, never DICOM header values."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


DICOM_HEAD_BYTES = 132  # a 128-byte preamble, then "DICM" (DICOM Part 10)


def is_dicom_head(head: bytes) -> bool:
    """True when `head` (a file's first DICOM_HEAD_BYTES bytes or more) carries the DICOM 'DICM' marker."""
    return len(head) >= DICOM_HEAD_BYTES and head[128:DICOM_HEAD_BYTES] == b"DICM"


def has_dicom_marker(path: Path) -> bool:
    """True when the file carries the DICOM 'DICM' marker at byte 128 (the Part 10 preamble)."""
    try:
        with open(path, "rb") as fh:
            return is_dicom_head(fh.read(DICOM_HEAD_BYTES))
    except OSError:
        return False


def is_image_file(path: os.PathLike | str) -> bool:
    """True when the extension is one of IMAGE_EXTENSIONS, or an extension-less file is a DICOM file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return True
    return suffix == "" and path.is_file() and has_dicom_marker(path)


def _to_uint8_gray(arr: np.ndarray) -> np.ndarray:
    """Min-max scale a 2-D array of any numeric dtype to uint8 (constant image -> zeros)."""
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Pillow image of any mode -> (H, W, 3) uint8: alpha composited on black, palette expanded,
    16-bit / 32-bit / float grayscale min-max scaled to 8 bit, grayscale replicated to 3 channels."""
    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = _to_uint8_gray(np.asarray(im))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if (mode == "P" and "transparency" in im.info) or mode in ("PA", "LA", "RGBA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def too_large_reason(err: Exception) -> str:
    """The reason for an image above Pillow's decompression-bomb limit, with its size when Pillow names it."""
    limit = Image.MAX_IMAGE_PIXELS or 0
    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f" ({int(found.group(1)) / 1e6:.1f} megapixels)" if found else ""
    return (f"image is too large{size}: the limit is {limit / 1e6:.1f} megapixels (about {math.isqrt(limit)} × "
            f"{math.isqrt(limit)} px, Pillow's guard against decompression bombs); downscale it")


def _load_pil(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice the limit: refuse both, the same way
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # full decode: truncated files fail here, not later in training
                im = ImageOps.exif_transpose(im)  # phone/camera JPEGs stored rotated
                return pil_to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(path, too_large_reason(err)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, "not a readable image (truncated or corrupt?)") from err


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty")


def load_rgb(path: os.PathLike | str) -> np.ndarray:
    """Decode an image file (PNG/JPEG/TIFF/BMP/DICOM) to RGB uint8 (H, W, 3). Raises ImageReadError."""
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS or (suffix not in PIL_EXTENSIONS and has_dicom_marker(path)):
        from engine.data.dicom import read_dicom_rgb

        return read_dicom_rgb(path)
    return _load_pil(path)


def verify(path: os.PathLike | str) -> str | None:
    """None when `path` decodes fully, else a short reason ("file is empty", "not a readable image ...",
    "DICOM needs the 'pylibjpeg-libjpeg' package ..."). The reason never names the file or header values."""
    try:
        load_rgb(path)
    except ImageReadError as err:
        return err.reason
    except MemoryError:
        return "image too large to decode"
    return None


def resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: shorter side resized to round(size*256/224) (bilinear,
    antialiased by Pillow), then a centred size x size crop (as in the ROP paper: 256, then crop 224)."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {img.shape} {img.dtype}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    h, w = img.shape[:2]
    short = max(round(size * RESIZE_RATIO), size)
    if h <= w:
        new_h, new_w = short, max(round(w * short / h), short)
    else:
        new_h, new_w = max(round(h * short / w), short), short
    im = Image.fromarray(img)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), resample=Image.Resampling.BILINEAR, reducing_gap=None)
    top = (new_h - size) // 2
    left = (new_w - size) // 2
    out = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return np.ascontiguousarray(out)
