"""A tiny labelled dataset (PNG + DICOM) whose class is visible in the pixels, with expert disagreement."""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["normal", "pre-plus", "plus"]
SIZE = 32


def write_dicom(path: Path, rgb: np.ndarray, patient_name: str = "SECRET^PATIENT") -> None:
    """An RGB DICOM with a patient name the engine must never copy anywhere."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = "ID-12345"
    ds.Modality = "OP"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def make_dataset(root: Path, n_per_class: int = 16, seed: int = 0) -> Path:
    """Class k = a bright bar at a class-specific position; 3 experts; about half the images unanimous."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    i = 0
    for k, cls in enumerate(CLASSES):
        for j in range(n_per_class):
            img = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
            img[:, 4 + k * 9: 10 + k * 9, k] = 230  # class signal: a coloured vertical bar
            name = f"img/{cls}_{j}.dcm" if j == 0 else f"img/{cls}_{j}.png"
            if name.endswith(".dcm"):
                write_dicom(root / name, img)
            else:
                Image.fromarray(img).save(root / name)
            votes = [cls, cls, cls]
            if j % 2 == 1:  # split vote: one expert (or two, every 4th) says a neighbouring class
                other = CLASSES[(k + 1) % 3]
                votes[j % 3] = other
                if j % 4 == 3:
                    votes[(j + 1) % 3] = other
            rows.append([name, f"P{k}{j // 4}{j % 2}", *votes])  # a patient's two images agree in consensus
            i += 1
    lines = ["image,patient_id,dr_a,dr_b,dr_c"] + [",".join(r) for r in rows]
    (root / "votes.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def run_args(dataset: Path, out: Path, method: str = "ce", *extra: str) -> list[str]:
    """Command line for a few-second CPU run."""
    return ["run", str(dataset), "--out", str(out), "--method", method, "--classes", ",".join(CLASSES),
            "--backbone", "test_resnet", "--image-size", str(SIZE), "--epochs", "3", "--warmup-epochs", "1",
            "--batch-size", "8", "--lr", "0.05", "--lr-milestones", "", "--meta", "6", "--test", "6",
            "--cache-dir", str(dataset.parent / "cache"), *extra]


def make_aux(root: Path, n: int = 16, seed: int = 0) -> Path:
    """A tiny DR-like auxiliary dataset for `--pretrain`: `labels.csv` (image, level 0-4), a bright "lesion" when
    level > 0."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,level"]
    for i in range(n):
        img = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
        level = i % 5
        if level:
            img[10:14, 10:14, 0] = 255
        Image.fromarray(img).save(root / f"a{i}.png")
        rows.append(f"a{i}.png,{level}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root
