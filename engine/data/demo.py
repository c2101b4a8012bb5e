"""A SYNTHETIC ROP-like dataset for demos and tests: fundus-like images whose hidden severity raises vessel
tortuosity and width (how plus disease is defined), three simulated experts who disagree on borderline
images, a few DICOMs with fake patient fields, and an auxiliary DR-like set for the pretraining stage.

Nothing here is a real patient or a real image. Output is deterministic by seed (byte-identical files).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from engine import atomic
from engine.data import schema
from engine.errors import InputError, Problem

CLASSES = ("normal", "pre-plus", "plus")
TRUE_THRESHOLDS = (0.45, 0.70)  # severity < 0.45 normal, < 0.70 pre-plus, else plus
# severity quantiles (for the README preview): half the eyes below 0.45, 80 % below 0.70 -> about 50/30/20
_SEVERITY_KNOTS = ((0.0, 0.5, 0.8, 1.0), (0.15, 0.45, 0.70, 1.0))
CLASS_SHARE = (0.5, 0.3, 0.2)  # patients per true class, like ROP screening (exact counts, largest remainder)
CLASS_BAND = ((0.15, 0.45), (0.45, 0.70), (0.70, 1.0))  # severities of each true class (lower end: a visible tree)
# A quarter of each class's patients are clear-cut: both eyes sit where every expert's thresholds put that class,
# and the experts see them sharply, so both eyes are usually unanimous. Without them a patient-grouped split finds
# almost no unanimous pre-plus patient (pre-plus is the class experts disagree on most), and the meta set cannot
# teach that class. The other patients are borderline: their eyes sit near a class border.
CLEAR_SHARE = 0.25
CLEAR_MARGIN = 0.025  # how far inside every expert's thresholds a clear-cut severity lies
CLEAR_NOISE, BORDER_NOISE = 0.12, 1.2  # factors on each expert's noise for clear-cut / borderline patients
EYE_SPREAD, CLEAR_EYE_SPREAD = 0.06, 0.01  # sd of an eye's severity around its patient's


@dataclass(frozen=True)
class SimExpert:
    """A simulated grader: sees severity + N(0, noise) and applies their own two thresholds."""

    name: str
    thresholds: tuple[float, float]
    noise: float


# with the patient mix above, about 40 % of the images are unanimous (the ROP study had 32 %)
EXPERTS = (
    SimExpert("dr_a", (0.51, 0.77), 0.20),  # conservative
    SimExpert("dr_b", (0.37, 0.62), 0.20),  # calls disease early
    SimExpert("dr_c", (0.45, 0.71), 0.25),  # unbiased but less consistent
)
DICOM_FRACTION = 0.05  # at least 3 images are written as DICOM
JPEG_FRACTION = 0.10
AUX_LEVEL_P = (0.50, 0.12, 0.18, 0.10, 0.10)  # EyePACS-style DR grades 0..4 (0 = no lesions)
README_MARKER = "SYNTHETIC demo dataset"


# ----------------------------------------------------------------------------------------------- rendering


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean smooth noise (size, size) float32 with about `cells` blobs across, sd ~1."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _vessel(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    curvature: float,
    length: float,
    width: float,
    severity: float,
    scale: float,
    depth: int,
    out: list[tuple[np.ndarray, float]],
) -> None:
    """Append the polyline chunks (points (P, 2), width) of one vessel and its branches to `out`.

    Tortuosity: a perpendicular sinusoid whose amplitude grows with severity**1.5 (plus: tortuous, dilated)."""
    step = 3.0 * scale / 256  # 3 px of a 256-px image (scale is the side of the 2x drawing canvas)
    n = max(int(length / step), 6)
    s = np.arange(n, dtype=np.float64) * step
    theta = heading + curvature * s + np.cumsum(rng.normal(0.0, 0.018, n))
    pts = start + np.cumsum(np.stack([np.cos(theta), np.sin(theta)], axis=1) * step, axis=0)
    pts = np.vstack([start, pts[:-1]])
    wavelength = scale * rng.uniform(0.05, 0.085) * (1.0 + 0.4 * width / (0.02 * scale))
    phase = np.cumsum(2 * np.pi * step / wavelength * (1 + 0.35 * rng.standard_normal(n)).clip(0.3, 2))
    amp = scale * (0.0015 + 0.020 * severity**1.5) * np.sqrt(width / (0.016 * scale) + 0.25)
    ramp = np.clip(s / (0.04 * scale), 0, 1)  # vessels leave the disc straight
    offset = amp * ramp * np.sin(phase + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.7, 1.3)
    normal = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
    pts = pts + offset[:, None] * normal
    # taper: 4 chunks with decreasing width, overlapping by one point
    bounds = np.linspace(0, n, 5).astype(int)
    for k in range(4):
        chunk = pts[bounds[k] : min(bounds[k + 1] + 1, n)]
        if len(chunk) >= 2:
            out.append((chunk, width * (1.0 - 0.12 * k)))
    if depth <= 0 or width < 0.004 * scale:
        return
    for side in rng.permutation([-1.0, 1.0])[: rng.integers(1, 3)]:
        at = int(n * rng.uniform(0.25, 0.7))
        child_heading = theta[at] + side * rng.uniform(0.35, 0.8)
        _vessel(
            rng,
            pts[at],
            child_heading,
            rng.normal(0, 0.6) / scale,
            (n - at) * step * rng.uniform(0.55, 0.95),
            width * rng.uniform(0.55, 0.72),
            severity,
            scale,
            depth - 1,
            out,
        )


def render_fundus(
    rng: np.random.Generator,
    size: int,
    *,
    severity: float,
    left_eye: bool = False,
    dr_level: int | None = None,
) -> np.ndarray:
    """Synthetic fundus photo (size, size, 3) uint8: orange-red disc on black, bright optic disc, vessel tree.

    `severity` in [0, 1] raises vessel tortuosity and width (plus disease); `dr_level` 0..4 adds DR-like
    lesions (microaneurysms, haemorrhages, exudates, new vessels) and an adult 45-degree-camera layout."""
    S = size
    yy, xx = _grid(S)
    adult = dr_level is not None
    # python floats keep the float32 images float32 (numpy scalars would upcast to float64)
    cx, cy = (float(v) for v in S / 2 + rng.normal(0, 0.012 * S, 2))
    R = float(S * rng.uniform(0.445, 0.485))
    r = np.hypot(xx - cx, yy - cy) / R
    field = np.clip((1.0 - r) * R / 1.6, 0.0, 1.0)  # soft-edged circular field of view

    # layout of a right eye (disc nasal = right of centre); left eyes are mirrored at the end
    disc_dx = (0.20 if adult else 0.13) * S
    dcx = float(cx + disc_dx + rng.normal(0, 0.02 * S))
    dcy = float(cy + rng.normal(0, 0.03 * S))
    rd = float(S * rng.uniform(0.062, 0.075))
    d_disc = np.hypot(xx - dcx, yy - dcy)
    mcx, mcy = float(dcx - 5.0 * rd * rng.uniform(0.9, 1.1)), dcy + 0.5 * rd
    d_mac = np.hypot(xx - mcx, yy - mcy)

    if adult:
        base = np.array([rng.uniform(175, 215), rng.uniform(70, 100), rng.uniform(25, 45)], np.float32)
    else:
        base = np.array([rng.uniform(195, 235), rng.uniform(85, 125), rng.uniform(40, 70)], np.float32)
    illum = 1.0 - float(rng.uniform(0.35, 0.55)) * r**2 + 0.18 * np.exp(-((d_disc / (0.22 * S)) ** 2))
    tex = 0.06 * _smooth_noise(rng, S, 5) + 0.03 * _smooth_noise(rng, S, 22)
    shade = illum * (1.0 + tex)
    shade *= 1.0 - (0.32 if adult else 0.18) * np.exp(-((d_mac / (0.075 * S)) ** 2))
    img = shade[:, :, None] * base[None, None, :]

    # optic disc: yellow-white, brighter cup, soft halo
    disc_a = np.clip((1.0 - d_disc / rd) * 5.0, 0.0, 1.0) * 0.75 + 0.22 * np.exp(-((d_disc / (1.8 * rd)) ** 2))
    cup_a = np.clip((1.0 - d_disc / (0.4 * rd)) * 2.0, 0.0, 1.0) * 0.45
    disc_col = np.array([245, 196, 140], np.float32)
    img = img * (1 - disc_a[..., None]) + disc_col * disc_a[..., None]
    img = img * (1 - cup_a[..., None]) + np.array([252, 232, 195], np.float32) * cup_a[..., None]

    # vessels, drawn at 2x then box-downsampled (anti-aliasing)
    S2 = 2 * S
    start = np.array([2 * dcx, 2 * dcy])
    rot = rng.normal(0, 0.12)
    w0 = S2 * 0.0105 * (1.0 + 0.9 * severity) * rng.uniform(0.9, 1.1)
    reach = 1.0 * R * 2 * (1.3 if adult else 1.0)
    trunks = [  # (heading, curvature sign, length factor, width factor) for a right eye, temporal = pi
        (-np.pi / 2 - 0.3, -1, 1.0, 1.0),  # superior temporal arcade
        (np.pi / 2 + 0.3, 1, 1.0, 1.0),  # inferior temporal arcade
        (-np.pi / 2 + 0.5, 1, 0.75, 0.8),  # superior nasal
        (np.pi / 2 - 0.5, -1, 0.75, 0.8),  # inferior nasal
        (0.05, 0, 0.55, 0.55),  # nasal
        (np.pi + 0.25, 0, 0.45, 0.45),  # small macular branches
        (np.pi - 0.25, 0, 0.45, 0.45),
    ]
    layers = {"vein": [], "artery": []}
    for heading, bend, length_f, width_f in trunks:
        for kind, dh, wk in (("vein", -0.09, 1.0), ("artery", 0.09, 0.72)):
            _vessel(
                rng,
                start + rng.normal(0, 0.15 * rd, 2),
                heading + rot + dh * rng.uniform(0.5, 1.5),
                bend * rng.uniform(1.1, 1.8) / reach,
                reach * length_f * rng.uniform(0.85, 1.1),
                w0 * width_f * wk,
                severity,
                S2,
                3 if length_f >= 0.75 else 2,
                layers[kind],
            )
    for kind, tint in (("vein", (0.55, 0.33, 0.45)), ("artery", (0.74, 0.50, 0.55))):
        canvas = Image.new("L", (S2, S2), 0)
        draw = ImageDraw.Draw(canvas)
        for pts, width in layers[kind]:
            draw.line(
                [tuple(p) for p in pts.round(1).tolist()], fill=235, width=max(int(round(width)), 1), joint="curve"
            )
        alpha = np.asarray(canvas.reduce(2), dtype=np.float32) / 255.0
        # vessels fade into the disc centre
        alpha *= np.clip(d_disc / (0.5 * rd), 0.35, 1.0)
        img *= 1.0 - alpha[..., None] * (1.0 - np.array(tint, np.float32))

    if adult and dr_level:
        img = _draw_lesions(rng, img, S, dr_level, (dcx, dcy, rd), (mcx, mcy), (cx, cy, R))

    img = img * float(rng.uniform(0.9, 1.1))  # exposure
    img = np.clip(img, 0, 255).astype(np.uint8)
    im = Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.8)))
    out = np.asarray(im, dtype=np.float32) + 2.0 * rng.standard_normal((S, S, 3), dtype=np.float32)
    out *= field[..., None]
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if left_eye:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _draw_lesions(rng, img, S, level, disc, macula, fov) -> np.ndarray:
    """DR-like lesions by grade: red dots (microaneurysms), blots (haemorrhages), yellow exudates, new vessels."""
    dcx, dcy, rd = disc
    mcx, mcy = macula
    cx, cy, R = fov
    counts = {  # level -> (microaneurysms, haemorrhages, exudates)
        1: (rng.integers(2, 7), 0, 0),
        2: (rng.integers(6, 16), rng.integers(1, 5), rng.integers(0, 8)),
        3: (rng.integers(12, 26), rng.integers(5, 12), rng.integers(6, 18)),
        4: (rng.integers(12, 26), rng.integers(5, 12), rng.integers(6, 18)),
    }[level]
    S2 = 2 * S
    red = Image.new("L", (S2, S2), 0)
    yellow = Image.new("L", (S2, S2), 0)
    dr, dy_ = ImageDraw.Draw(red), ImageDraw.Draw(yellow)

    def spot(near_macula: bool) -> tuple[float, float]:
        while True:
            if near_macula:
                x, y = rng.normal([mcx, mcy], 0.12 * S)
            else:
                a, rr = rng.uniform(0, 2 * np.pi), R * np.sqrt(rng.uniform(0.01, 0.8))
                x, y = cx + rr * np.cos(a), cy + rr * np.sin(a)
            if np.hypot(x - dcx, y - dcy) > 1.5 * rd and np.hypot(x - cx, y - cy) < 0.92 * R:
                return 2 * x, 2 * y

    for _ in range(counts[0]):
        x, y = spot(rng.random() < 0.5)
        rr = 2 * S / 256 * rng.uniform(0.9, 1.6)
        dr.ellipse((x - rr, y - rr, x + rr, y + rr), fill=230)
    for _ in range(counts[1]):
        x, y = spot(False)
        rx, ry = 2 * S / 256 * rng.uniform(2.0, 4.5, 2)
        dr.ellipse((x - rx, y - ry, x + rx, y + ry), fill=int(rng.uniform(150, 220)))
    for _ in range(counts[2]):
        x, y = spot(True)
        rr = 2 * S / 256 * rng.uniform(0.8, 2.2)
        dy_.ellipse((x - rr, y - rr, x + rr, y + rr), fill=int(rng.uniform(170, 240)))
    if level == 4:  # neovascularisation: small tangles of thin vessels near the disc
        for _ in range(rng.integers(2, 4)):
            a = rng.uniform(0, 2 * np.pi)
            ox, oy = dcx + 1.6 * rd * np.cos(a), dcy + 1.6 * rd * np.sin(a)
            turn = np.cumsum(rng.normal(0.35, 0.7, 36))  # a curly random walk
            walk = np.cumsum(0.12 * rd * np.stack([np.cos(turn), np.sin(turn)], axis=1), axis=0)
            pts = 2 * (np.array([ox, oy]) + walk)
            dr.line([tuple(p) for p in pts.tolist()], fill=200, width=max(int(2 * S / 256), 1), joint="curve")
    red_a = np.asarray(red.reduce(2), np.float32)[..., None] / 255.0
    yellow_a = np.asarray(yellow.reduce(2), np.float32)[..., None] / 255.0
    img = img * (1 - red_a) + np.array([120, 18, 12], np.float32) * red_a
    img = img * (1 - yellow_a) + np.array([235, 215, 110], np.float32) * yellow_a
    return img


# ----------------------------------------------------------------------------------------------- labels


def severity_from_uniform(u: np.ndarray) -> np.ndarray:
    """Map U(0,1) draws (N,) to severities (N,) so that about 50/30/20 % fall in normal/pre-plus/plus."""
    return np.interp(u, *_SEVERITY_KNOTS)


def severity_class(severity: np.ndarray, thresholds: tuple[float, float] = TRUE_THRESHOLDS) -> np.ndarray:
    """Severity (N,) -> class index (N,) int: 0 normal, 1 pre-plus, 2 plus."""
    return np.digitize(severity, thresholds).astype(int)


def clear_cores(experts=EXPERTS, margin: float = CLEAR_MARGIN) -> tuple[tuple[float, float], ...]:
    """Per class, the severities (lo, hi) that every expert's thresholds put in that class, `margin` inside."""
    low = min(e.thresholds[0] for e in experts) - margin  # the earliest "pre-plus" call
    mid_lo = max(e.thresholds[0] for e in experts) + margin
    mid_hi = min(e.thresholds[1] for e in experts) - margin
    high = max(e.thresholds[1] for e in experts) + margin  # the latest "plus" call
    return (CLASS_BAND[0][0], low), (mid_lo, mid_hi), (high, CLASS_BAND[2][1])


def _patient_severities(layout: np.random.Generator, n_pat: int) -> tuple[np.ndarray, np.ndarray]:
    """(severity (P,), clear (P,) bool) per patient: exact CLASS_SHARE class counts, CLEAR_SHARE of each class
    clear-cut (severity inside the class's clear core), the others borderline (in the class band, outside the core)."""
    from engine.data.split import largest_remainder

    per_class = largest_remainder(n_pat, [round(1000 * s) for s in CLASS_SHARE])
    cls = layout.permutation(np.repeat(np.arange(len(CLASSES)), per_class))
    clear = np.zeros(n_pat, dtype=bool)
    for c in range(len(CLASSES)):
        members = np.flatnonzero(cls == c)
        clear[members[: int(np.ceil(CLEAR_SHARE * len(members)))]] = True
    cores = np.array(clear_cores())[cls]  # (P, 2)
    bands = np.array(CLASS_BAND)[cls]
    u = layout.random(n_pat)
    below, above = cores[:, 0] - bands[:, 0], bands[:, 1] - cores[:, 1]
    x = u * (below + above)  # borderline: uniform over the band minus the core
    border = np.where(x < below, bands[:, 0] + x, cores[:, 1] + (x - below))
    severity = np.where(clear, cores[:, 0] + u * (cores[:, 1] - cores[:, 0]), border)
    return severity, clear


def simulate_labels(n: int, seed: int, layout: np.random.Generator | None = None):
    """Patients, eyes, severities and votes of a demo of `n` images -> patient_no (N,) int, left_eye (N,) bool,
    severity (N,) float in [0, 1], votes (N, E) class indices. Two eyes per patient with similar severity."""
    layout = np.random.default_rng([seed, 0]) if layout is None else layout
    n_pat = (n + 1) // 2
    pat_sev, pat_clear = _patient_severities(layout, n_pat)
    patient_no = np.arange(n) // 2
    eye_left = (np.arange(n) % 2 == 1) ^ (layout.random(n_pat) < 0.5)[patient_no]
    clear = pat_clear[patient_no]
    spread = np.where(clear, CLEAR_EYE_SPREAD, EYE_SPREAD)
    severity = np.clip(pat_sev[patient_no] + layout.normal(0, 1, n) * spread, 0.0, 1.0).round(4)
    votes = simulate_votes(severity, np.random.default_rng([seed, 1]),
                           noise_scale=np.where(clear, CLEAR_NOISE, BORDER_NOISE))
    return patient_no, eye_left, severity, votes


def simulate_votes(severity: np.ndarray, rng: np.random.Generator, experts=EXPERTS,
                   noise_scale: np.ndarray | float = 1.0) -> np.ndarray:
    """(N,) severities -> (N, E) class indices: each expert adds their own per-image noise (sd = the expert's
    noise × noise_scale, (N,) or scalar), then applies their thresholds."""
    n = len(severity)
    cols = [severity_class(severity + rng.normal(0.0, e.noise, n) * noise_scale, e.thresholds) for e in experts]
    return np.stack(cols, axis=1)


# ----------------------------------------------------------------------------------------------- writing


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)  # speed over size
    return buf.getvalue()


def _jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _dicom_bytes(img: np.ndarray, *, seed: int, name: str, patient_no: int, gray16: bool) -> bytes:
    """A DICOM file (bytes) with FAKE patient fields; 16-bit MONOCHROME2 with a window, or 8-bit RGB.

    UIDs derive from seed and name (no timestamps), so the bytes are reproducible."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    def uid(part: str) -> str:
        return generate_uid(entropy_srcs=["rop-noisy-labels demo", str(seed), name, part])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid(f"study-{patient_no}")
    ds.SeriesInstanceUID = uid("series")
    # FAKE identifying fields, present so that de-identification is exercised
    ds.PatientName = f"DEMO^PATIENT{patient_no:02d}"
    ds.PatientID = f"DEMO-{patient_no:04d}"
    ds.PatientBirthDate = "20240101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.ContentDate = "20240301"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.InstitutionName = "SYNTHETIC DEMO HOSPITAL"
    ds.ReferringPhysicianName = "DEMO^DOCTOR"
    ds.Modality = "OP"
    ds.ConversionType = "SYN"
    ds.ImageComments = "SYNTHETIC image generated by rop-noisy-labels demo-data; not a real patient"
    ds.Rows, ds.Columns = img.shape[:2]
    ds.PixelRepresentation = 0
    if gray16:
        # red-free style: green-weighted grey, stored as 12-bit values with a window covering the fundus
        gray = img.astype(np.float32) @ np.array([0.25, 0.65, 0.10], np.float32)
        values = np.round(100 + gray * 15.0).astype(np.uint16)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.WindowCenter, ds.WindowWidth = 2000, 3900
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = values.tobytes()
    else:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.ascontiguousarray(img).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _prepare_out(out: Path) -> None:
    """`out` must be new, empty, or an earlier demo (whose generated folders are replaced)."""
    if out.exists() and not out.is_dir():
        raise InputError(Problem(str(out), "exists and is not a folder", "choose a new folder for the demo"))
    if out.is_dir() and any(out.iterdir()):
        readme = out / "README.md"
        if not (readme.is_file() and README_MARKER in readme.read_text(encoding="utf-8", errors="replace")):
            raise InputError(
                Problem(
                    str(out), "folder is not empty and is not an earlier demo dataset", "choose a new or empty folder"
                )
            )
        for sub in ("images", "dr_aux"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def generate_demo(out: os.PathLike | str, *, n: int = 400, seed: int = 0, size: int = 256, n_aux: int = 200) -> Path:
    """Write the synthetic dataset into `out` and return it: votes.csv (image, patient_id, dr_a, dr_b, dr_c),
    images/, ground_truth.csv (image, true_class, severity), README.md, dr_aux/labels.csv (image, level)."""
    if n < 1 or size < 32 or n_aux < 0:
        raise InputError(Problem("demo-data", f"need n >= 1, size >= 32, n_aux >= 0 (got {n}, {size}, {n_aux})"))
    out = Path(out)
    _prepare_out(out)
    layout = np.random.default_rng([seed, 0])
    patient_no, eye_left, severity, votes = simulate_labels(n, seed, layout)
    truth = severity_class(severity)
    n_pat = int(patient_no.max()) + 1

    n_dicom = min(n, max(3, round(DICOM_FRACTION * n)))
    dicom_idx = sorted(layout.choice(n, n_dicom, replace=False).tolist())
    rest = np.setdiff1d(np.arange(n), dicom_idx)
    jpeg_idx = set(layout.choice(rest, round(JPEG_FRACTION * n), replace=False).tolist()) if len(rest) else set()
    gray_dicom = {i for k, i in enumerate(dicom_idx) if k % 2 == 0}

    width = max(3, len(str(n_pat)))
    vote_rows, truth_rows = [], []
    for i in range(n):
        pid = f"P{patient_no[i] + 1:0{width}d}"
        ext = ".dcm" if i in dicom_idx else ".jpg" if i in jpeg_idx else ".png"
        rel = f"images/{pid}_{'L' if eye_left[i] else 'R'}{ext}"
        img = render_fundus(
            np.random.default_rng([seed, 2, i]), size, severity=float(severity[i]), left_eye=bool(eye_left[i])
        )
        if ext == ".dcm":
            data = _dicom_bytes(img, seed=seed, name=rel, patient_no=int(patient_no[i]) + 1, gray16=i in gray_dicom)
        else:
            data = _jpeg_bytes(img) if ext == ".jpg" else _png_bytes(img)
        atomic.write_bytes(out / rel, data)
        vote_rows.append([rel, pid, *(CLASSES[v] for v in votes[i])])
        truth_rows.append([rel, CLASSES[truth[i]], f"{severity[i]:.4f}"])
    _write_csv(out / "votes.csv", [schema.IMAGE, schema.PATIENT_ID, *(e.name for e in EXPERTS)], vote_rows)
    _write_csv(out / "ground_truth.csv", [schema.IMAGE, "true_class", "severity"], truth_rows)

    # auxiliary DR-like set for pretraining
    aux = np.random.default_rng([seed, 3])
    levels = aux.choice(len(AUX_LEVEL_P), size=n_aux, p=AUX_LEVEL_P)
    aux_rows = []
    for j in range(n_aux):
        rel = f"images/aux_{j + 1:04d}.png"
        rng = np.random.default_rng([seed, 4, j])
        img = render_fundus(
            rng, size, severity=float(rng.uniform(0, 0.3)), left_eye=bool(j % 2), dr_level=int(levels[j])
        )
        atomic.write_bytes(out / "dr_aux" / rel, _png_bytes(img))
        aux_rows.append([rel, int(levels[j])])
    _write_csv(out / "dr_aux" / "labels.csv", [schema.IMAGE, "level"], aux_rows)

    atomic.write_text(out / "README.md", _readme(demo_stats(out), n=n, seed=seed, size=size))
    return out


def demo_stats(out: os.PathLike | str) -> dict:
    """Summary of a generated demo, read back from its CSVs: counts, class balance, unanimity, majority accuracy."""
    out = Path(out)
    with open(out / "votes.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with open(out / "ground_truth.csv", newline="", encoding="utf-8") as fh:
        truth = {r[schema.IMAGE]: r["true_class"] for r in csv.DictReader(fh)}
    names = [e.name for e in EXPERTS]
    unanimous = sum(len({r[e] for e in names}) == 1 for r in rows)
    correct = 0
    for r in rows:
        counts = [sum(r[e] == c for e in names) for c in CLASSES]
        top = max(counts)
        majority = max(k for k, c in enumerate(counts) if c == top)  # ties -> more severe class
        correct += CLASSES[majority] == truth[r[schema.IMAGE]]
    aux_path = out / "dr_aux" / "labels.csv"
    aux_levels: dict[str, int] = {}
    if aux_path.is_file():
        with open(aux_path, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                aux_levels[r["level"]] = aux_levels.get(r["level"], 0) + 1
    n = len(rows)
    return {
        "n_images": n,
        "n_patients": len({r[schema.PATIENT_ID] for r in rows}),
        "n_dicom": sum(r[schema.IMAGE].endswith(".dcm") for r in rows),
        "n_jpeg": sum(r[schema.IMAGE].endswith(".jpg") for r in rows),
        "true_class_counts": {c: sum(t == c for t in truth.values()) for c in CLASSES},
        "unanimous_fraction": unanimous / n if n else 0.0,
        "majority_matches_truth": correct / n if n else 0.0,
        "n_aux": sum(aux_levels.values()),
        "aux_level_counts": dict(sorted(aux_levels.items())),
    }


def _readme(stats: dict, *, n: int, seed: int, size: int) -> str:
    experts = "\n".join(
        f"| {e.name} | {e.thresholds[0]:.2f} | {e.thresholds[1]:.2f} | {e.noise:.2f} |" for e in EXPERTS
    )
    balance = ", ".join(f"{c} {k}" for c, k in stats["true_class_counts"].items())
    share = " / ".join(f"{100 * s:.0f} %" for s in CLASS_SHARE)
    return f"""# {README_MARKER} (retinopathy of prematurity, plus disease)

**Every image and every label in this folder is SYNTHETIC.** No real patient, image or grading was used.
The images are drawn by `python -m engine demo-data` (seed {seed}, {n} images, {size}x{size} px) to try the
tool end to end; they are not suitable for any clinical or research conclusion. The "patient" names inside the
DICOM files (`DEMO^PATIENTnn`) are fake and only there to exercise de-identification.

## How it is made
- Each image has a hidden severity in [0, 1]. Severity raises the tortuosity and the width of the vessels
  (how plus disease is defined). True class: severity < {TRUE_THRESHOLDS[0]} normal, < {TRUE_THRESHOLDS[1]} pre-plus,
  else plus. Balance here: {balance}.
- Two images (eyes) per patient (`patient_id`); the eyes of one patient have similar severity. Patients are
  {share} normal / pre-plus / plus (an eye near a border may fall in the neighbouring class). A quarter of
  each class's patients are clear-cut (both eyes well inside every expert's thresholds, seen sharply, so usually
  unanimous: the meta and test sets can hold every class); the others are borderline (near a class border,
  graded with more noise).
- Three simulated experts grade every image: each sees severity + their own Gaussian noise and applies their own
  thresholds, so borderline images split:

| expert | normal / pre-plus | pre-plus / plus | noise (sd) |
|---|---|---|---|
{experts}

- Unanimous images: {stats["unanimous_fraction"]:.1%} (the ROP study this mimics had 32 %).
  The majority vote (ties to the more severe class) matches the hidden class for {stats["majority_matches_truth"]:.1%}.
- {stats["n_dicom"]} images are DICOM (half 16-bit MONOCHROME2 with a window, half RGB), {stats["n_jpeg"]} JPEG, the rest PNG.

## Files
- `votes.csv`: `image, patient_id, {", ".join(e.name for e in EXPERTS)}` - the input the tool expects. Classes in order of
  severity: pass `--classes {",".join(CLASSES)}` so ties resolve toward the more severe class.
- `images/`: the images.
- `ground_truth.csv`: `image, true_class, severity` - the hidden truth, kept OUT of votes.csv; only for
  measuring how well a method recovers it.
- `dr_aux/labels.csv` + `dr_aux/images/`: {stats["n_aux"]} auxiliary DR-like fundus images with EyePACS-style grades
  `level` 0-4 (0 = no lesions; red dots, blots, yellow exudates and new vessels with higher grades), for the
  pretraining stage (binarised as DR / no DR).

License: CC0 (synthetic data).
"""


def make_preview(path: os.PathLike | str, *, seed: int = 0, per_class: int = 3, tile: int = 160) -> Path:
    """Write a small labelled contact sheet PNG (per_class images of each class) for the README."""
    rng = np.random.default_rng([seed, 9])
    picks: dict[int, list[float]] = {0: [], 1: [], 2: []}
    while min(len(v) for v in picks.values()) < per_class:
        s = float(severity_from_uniform(rng.uniform(size=1))[0])
        c = int(severity_class(np.array([s]))[0])
        if len(picks[c]) < per_class:
            picks[c].append(s)
    label_h, title_h = 18, 20
    sheet = Image.new("RGB", (tile * per_class, title_h + 3 * (tile + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), "SYNTHETIC demo images (python -m engine demo-data), hidden class", fill=(160, 0, 0))
    for c in range(3):
        for k, s in enumerate(sorted(picks[c])):
            img = render_fundus(np.random.default_rng([seed, 10, c, k]), 256, severity=s, left_eye=bool(k % 2))
            sheet.paste(
                Image.fromarray(img).resize((tile, tile), Image.Resampling.LANCZOS),
                (k * tile, title_h + c * (tile + label_h) + label_h),
            )
            draw.text(
                (k * tile + 4, title_h + c * (tile + label_h) + 3), f"{CLASSES[c]} (severity {s:.2f})", fill=(0, 0, 0)
            )
    buf = io.BytesIO()
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)  # small
    return atomic.write_bytes(path, buf.getvalue())
