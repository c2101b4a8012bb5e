"""Fixtures for the votes/aggregate/split/inspect tests: tiny generated datasets (8x8 PNGs) and a CLI runner."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["normal", "pre-plus", "plus"]


def _png(path: Path, seed: int = 0, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def write_votes(
    root: Path, header: list[str], rows: list[list[str]], *, images: bool = True, encoding: str = "utf-8"
) -> Path:
    """Write root/votes.csv (csv module, UTF-8) and, if `images`, an 8x8 PNG for every relative image path."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "votes.csv", "w", newline="", encoding=encoding) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    if images and "image" in header:
        col = header.index("image")
        for i, row in enumerate(rows):
            rel = row[col]
            if rel and not rel.startswith("/") and ".." not in rel:
                _png(root / rel, seed=i)
    return root


@pytest.fixture
def make_votes():
    """make_votes(root, header, rows, images=True) -> root: writes votes.csv (+ PNGs)."""
    return write_votes


@pytest.fixture
def make_png():
    """make_png(path, seed=0, size=8): a tiny random RGB PNG."""
    return _png


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    """12 images, 3 experts, 6 patients: consensus, ties, a single-grader image and an ungraded one."""
    header = ["image", "patient_id", "dr_a", "dr_b", "dr_c"]
    rows = [
        ["img/00.png", "P1", "normal", "normal", "normal"],  # consensus normal
        ["img/01.png", "P1", "normal", "normal", ""],  # consensus normal (2 graders)
        ["img/02.png", "P2", "plus", "plus", "plus"],  # consensus plus
        ["img/03.png", "P2", "plus", "pre-plus", "plus"],  # majority plus
        ["img/04.png", "P3", "normal", "plus", ""],  # tie -> plus (more severe)
        ["img/05.png", "P3", "pre-plus", "pre-plus", "pre-plus"],  # consensus pre-plus
        ["img/06.png", "P4", "pre-plus", "", ""],  # single grader
        ["img/07.png", "P4", "", "", ""],  # nobody graded -> unlabeled
        ["img/08.png", "P5", "normal", "normal", "normal"],
        ["img/09.png", "P5", "normal", "normal", "normal"],
        ["img/10.png", "P6", "pre-plus", "pre-plus", "pre-plus"],
        ["img/11.png", "P6", "normal", "pre-plus", "normal"],
    ]
    return write_votes(tmp_path / "ds", header, rows)


def synthetic_rows(n: int, *, seed: int = 0, experts: int = 3, patients: bool = True, p_agree: float = 0.8):
    """(header, rows) of a random ROP-like votes table without images (for check_images=False)."""
    rng = np.random.default_rng(seed)
    names = [f"dr_{i}" for i in range(experts)]
    header = ["image", "patient_id", *names]
    rows = []
    for i in range(n):
        truth = rng.choice(3, p=[0.6, 0.3, 0.1])
        grades = [CLASSES[truth] if rng.random() < p_agree else CLASSES[rng.integers(3)] for _ in names]
        rows.append([f"img/{i:04d}.png", f"P{i // 2}" if patients else "", *grades])
    return header, rows


@pytest.fixture
def cli_main(monkeypatch):
    """engine.cli.main restricted to the command modules that exist (others are written in parallel)."""
    from engine import cli

    present = {k: v for k, v in cli.COMMANDS.items() if importlib.util.find_spec(f"engine.commands.{v}")}
    monkeypatch.setattr(cli, "COMMANDS", present)
    return cli.main


@pytest.fixture
def synthetic():
    """synthetic(n, seed=0, experts=3, patients=True, p_agree=0.8) -> (header, rows) without images."""
    return synthetic_rows
