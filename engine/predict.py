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


def predict_images(run: str | Path, images: list[str | Path], *, batch_size: int = 64, device: str = "auto",
                   workers: int | None = None) -> pd.DataFrame:
    """DataFrame[image, p:<class>..., predicted, confidence]; unreadable images are reported all at once.

    `device`: auto | cpu | cuda | mps (`engine.runtime.resolve_device`). Images are decoded by `workers` threads
    (default: `engine.runtime.thread_count()`; Pillow and pydicom release the GIL while decoding) one chunk ahead of
    the batched forward passes, which run in `torch.inference_mode`.
    """
    from concurrent.futures import ThreadPoolExecutor

    from engine.runtime import resolve_device, thread_count

    model, meta = load_model(run)
    dev = resolve_device(device)
    model.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    paths = collect_images(images)
    size, classes = int(meta["image_size"]), list(meta["classes"])
    mean = torch.tensor(meta["mean"], device=dev).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], device=dev).view(1, -1, 1, 1)
    probs, problems = [], []
    with ThreadPoolExecutor(max_workers=workers or thread_count()) as pool:
        for chunk, decoded in _decoded_chunks(paths, size, batch_size * 4, pool):
            pixels = []
            for p, (img, reason) in zip(chunk, decoded, strict=True):
                if reason:
                    problems.append(Problem(str(p), reason, "fix or remove the file"))
                else:
                    pixels.append(img)
            if not problems:  # after a bad file: keep decoding to report every one, skip the forward passes
                probs += _forward(model, np.stack(pixels), mean, std, batch_size)
    if problems:
        raise InputError(problems)
    p = torch.cat(probs).numpy()
    frame = pd.DataFrame({S.IMAGE: [str(x) for x in paths]})
    for k, c in enumerate(classes):
        frame[S.prob_col(c)] = p[:, k].round(6)
    frame[S.PREDICTED] = [classes[k] for k in p.argmax(1)]
    frame[S.CONFIDENCE] = p.max(1)
    return frame[S.predict_columns(classes)]


def _decoded_chunks(paths: list[Path], size: int, chunk: int, pool):
    """(paths, [(image, reason)...]) per chunk of `chunk` files; the next chunk decodes while this one is used."""
    futures = [pool.submit(_decode, p, size) for p in paths[:chunk]]
    for start in range(0, len(paths), chunk):
        following = [pool.submit(_decode, p, size) for p in paths[start + chunk:start + 2 * chunk]]
        yield paths[start:start + chunk], [f.result() for f in futures]
        futures = following


def _decode(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
    """(resized image (size, size, 3) uint8, None) or (None, why it cannot be read)."""
    from engine.data.images import ImageReadError, load_rgb, resize_center_crop

    try:
        return resize_center_crop(load_rgb(path), size), None
    except ImageReadError as exc:
        return None, exc.reason


@torch.inference_mode()
def _forward(model, pixels: np.ndarray, mean, std, batch_size: int) -> list[torch.Tensor]:
    """Softmax probabilities (on the CPU) of uint8 images (N, S, S, 3), normalised on the model's device."""
    dev = mean.device
    out = []
    for start in range(0, len(pixels), batch_size):
        x = torch.from_numpy(pixels[start:start + batch_size]).to(dev, non_blocking=True).permute(0, 3, 1, 2)
        x = (x.float().div_(255.0) - mean) / std
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(torch.softmax(model(x).float(), 1).cpu())
    return out
