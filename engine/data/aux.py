"""The auxiliary dataset for DR pretraining: a folder in our contract, or an EyePACS-style CSV `image,level`.

EyePACS grades (0 none, 1 mild, 2 moderate, 3 severe, 4 proliferative) are binarised as in the ROP study:
no DR (level 0) vs DR (level 1–4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import InputError, Problem

DR_CLASSES = ["no_dr", "dr"]


def load_aux(source: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """-> (image paths, labels (N,) int, class names). Folder with votes.csv, folder with labels.csv, or a CSV."""
    source = Path(source)
    if source.is_dir() and (source / "votes.csv").is_file():
        from engine.data.aggregate import aggregate
        from engine.data.votes import read_votes

        table = read_votes(source, check_images=True)
        agg = aggregate(table)
        index = {c: k for k, c in enumerate(table.classes)}
        labels = np.array([index.get(m, -1) for m in agg["majority"]])
        keep = labels >= 0
        return [p for p, k in zip(table.image_paths(), keep, strict=True) if k], labels[keep], list(table.classes)
    csv = source / "labels.csv" if source.is_dir() else source
    if not csv.is_file():
        raise InputError(Problem(str(source), "no votes.csv or labels.csv (image,level) found for pretraining",
                                 "pass a dataset folder in the votes.csv contract, or a CSV with columns image,level"))
    return _read_levels(csv)


def _read_levels(csv: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    from engine.data.images import verify

    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(Problem(str(csv), f"cannot read CSV ({exc})", "save it as UTF-8 with columns image,level")) from None
    missing = {"image", "level"} - set(frame.columns)
    if missing:
        raise InputError(Problem(str(csv), f"missing column(s) {sorted(missing)}", "columns must be image,level"))
    root = csv.parent.resolve()
    problems, paths, labels = [], [], []
    for row, (img, level) in enumerate(zip(frame["image"], frame["level"], strict=True), start=1):
        path = (root / img.strip()).resolve()
        if root not in path.parents:
            problems.append(Problem(str(csv), f"image '{img}' is outside the folder", "use relative paths", row))
            continue
        if level.strip() not in {"0", "1", "2", "3", "4"}:
            problems.append(Problem(str(csv), f"level '{level}' is not a DR grade 0-4", "use 0,1,2,3 or 4", row))
            continue
        reason = verify(path)
        if reason:
            problems.append(Problem(str(csv), f"image '{img}': {reason}", "fix or remove the row", row))
            continue
        paths.append(path)
        labels.append(int(int(level) > 0))
    if problems:
        raise InputError(problems)
    if len(set(labels)) < 2:
        raise InputError(Problem(str(csv), "pretraining needs both DR and no-DR images"))
    return paths, np.array(labels), list(DR_CLASSES)
