"""Predict new images with a run's `model.pt` (no dataset needed): files or folders, PNG/JPEG/TIFF/BMP/DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.data import schema as S
from engine.errors import InputError, Problem


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, metadata: backbone, classes, image_size, mean, std) from RUNDIR or RUNDIR/model.pt."""
    from engine.models import create_model

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise InputError(Problem(str(path), "model.pt not found", "give a finished run folder (state done)"))
    from engine.safe_load import torch_load

    try:
        blob = torch_load(path, what="model file")
        model = create_model(blob["backbone"], len(blob["classes"]))
        model.load_state_dict(blob["state_dict"])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(Problem(str(path), f"not a usable model file ({type(exc).__name__}: {exc})")) from None
    return model.eval(), {k: v for k, v in blob.items() if k != "state_dict"}


def collect_images(items: list[str | Path]) -> list[Path]:
    """Expand folders (recursively) into image files; keep explicit files; report missing ones together."""
    from engine.data.images import is_image_file

    out, problems = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
        elif p.is_file():
            out.append(p)
        else:
            problems.append(Problem(str(p), "no such file or folder"))
    if problems:
        raise InputError(problems)
    if not out:
        raise InputError(Problem(", ".join(map(str, items)), "no images found", "pass image files or folders"))
    return out


@torch.no_grad()
def predict_images(run: str | Path, images: list[str | Path], *, batch_size: int = 32,
                   device: str = "cpu") -> pd.DataFrame:
    """DataFrame[image, p:<class>..., predicted, confidence]; unreadable images are reported all at once."""
    from engine.data.images import ImageReadError, load_rgb, resize_center_crop

    model, meta = load_model(run)
    model.to(device)
    paths = collect_images(images)
    size, classes = int(meta["image_size"]), list(meta["classes"])
    pixels, problems = [], []
    for p in paths:
        try:
            pixels.append(resize_center_crop(load_rgb(p), size))
        except ImageReadError as exc:
            problems.append(Problem(str(p), exc.reason, "fix or remove the file"))
    if problems:
        raise InputError(problems)
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    probs = []
    for start in range(0, len(pixels), batch_size):
        x = torch.from_numpy(np.stack(pixels[start:start + batch_size])).permute(0, 3, 1, 2).float() / 255.0
        probs.append(torch.softmax(model(((x - mean) / std).to(device)).float(), 1).cpu())
    p = torch.cat(probs).numpy()
    frame = pd.DataFrame({S.IMAGE: [str(x) for x in paths]})
    for k, c in enumerate(classes):
        frame[S.prob_col(c)] = p[:, k].round(6)
    frame[S.PREDICTED] = [classes[k] for k in p.argmax(1)]
    frame[S.CONFIDENCE] = p.max(1)
    return frame[S.predict_columns(classes)]
