"""Fixtures for the app's AppTests: a tiny generated demo dataset, a temp workspace, a fake finished run.

No test here trains: pages that need a run get a run folder written by `make_fake_run` (the run-folder contract:
labels.csv, metrics.json, status.json, progress.jsonl, config.json).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOME = str(ROOT / "app" / "Home.py")
CLASSES = ["normal", "pre-plus", "plus"]


@pytest.fixture(scope="session")
def demo_src(tmp_path_factory) -> Path:
    """24 synthetic images (32 px, a few DICOMs) from the engine's demo generator, made once per session."""
    from engine.data.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo") / "demo", n=24, seed=0, size=32, n_aux=0)


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("ROP_WORKSPACE", str(ws))
    monkeypatch.delenv("ROP_DATASET", raising=False)
    monkeypatch.delenv("ROP_RUN", raising=False)
    return ws


@pytest.fixture
def demo(workspace, demo_src, monkeypatch) -> Path:
    """The tiny demo copied to where the app's 'Open the demo dataset' button looks, and opened (ROP_DATASET)."""
    target = workspace / "datasets" / "demo"
    shutil.copytree(demo_src, target)
    monkeypatch.setenv("ROP_DATASET", str(target))
    return target


def make_fake_run(run_dir: Path, dataset: Path, *, method: str = "mslg", seed: int = 0) -> Path:
    """A finished run folder in the contract's shape, with plausible soft labels (no training)."""
    from engine.data.aggregate import aggregate
    from engine.data.schema import labels_columns, method_prob_col, prob_col
    from engine.data.votes import read_votes
    from engine.flags import flag_images

    table = read_votes(dataset, classes=CLASSES)
    agg = aggregate(table)
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    major = np.array([CLASSES.index(m) if m else -1 for m in agg["majority"]])
    logits = rng.normal(0, 1.0, (len(agg), k))
    logits[np.arange(len(agg)), np.clip(major, 0, None)] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    flags = flag_images(probs, major, consensus=agg["consensus"].to_numpy(bool), tie=agg["tie"].to_numpy(bool),
                        classes=CLASSES)
    roles = np.where(agg["consensus"].to_numpy(bool), "meta", "train")
    frame = pd.DataFrame({
        "image": agg["image"], "role": roles, "votes": agg["votes"], "majority": agg["majority"],
        "consensus": agg["consensus"].astype(int),
        **{prob_col(c): probs[:, j].round(4) for j, c in enumerate(CLASSES)},
        **{c: flags[c] for c in ("suggested", "confidence", "flag", "flag_code", "flag_reason", "flag_score",
                                 "priority")},
        **{method_prob_col(c): probs[:, j].round(4) for j, c in enumerate(CLASSES)},
        "verified": 0,
    })[labels_columns(CLASSES)]
    run_dir.mkdir(parents=True)
    frame.to_csv(run_dir / "labels.csv", index=False)
    now = time.time()
    (run_dir / "config.json").write_text(json.dumps({
        "data": {"dataset": str(dataset)}, "runtime": {"method": method, "out": str(run_dir)}, "classes": CLASSES}))
    (run_dir / "status.json").write_text(json.dumps({
        "state": "done", "stage": "done", "epoch": 4, "of": 4, "updated": now, "pid": 999999, "elapsed_s": 12.0}))
    history = [{"stage": "warmup" if e < 2 else "main", "epoch": e, "loss": 1.0 / (e + 1), "meta_acc": 0.5 + 0.1 * e,
                "test_acc": 0.45 + 0.1 * e} for e in range(4)]
    (run_dir / "metrics.json").write_text(json.dumps({
        "method": method, "classes": CLASSES, "best_epoch": 4, "meta_acc": 0.8, "test_acc": 0.75,
        "n_images": len(frame), "n_flagged": int(frame["flag"].sum()), "history": history}))
    lines = []
    for e in range(4):
        for s in range(3):
            lines.append({"time": now, "stage": history[e]["stage"], "epoch": e, "step": s, "steps": 3,
                          "loss": 1.2 / (e + 1) - 0.05 * s, "of": 4, "eta_s": 1.0})
        lines.append({"time": now, "event": "epoch_end", **history[e]})
    (run_dir / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / "log.txt").write_text("2025-01-01 00:00:00 run mslg\n2025-01-01 00:00:12 done in 12.0s\n")
    return run_dir


def write_model(run_dir: Path, *, size: int = 32) -> Path:
    """A model.pt in the run-folder contract (what `engine predict` loads): timm's tiny test_resnet, untrained."""
    import torch

    from engine.models import create_model, normalisation

    torch.manual_seed(0)
    model = create_model("test_resnet", len(CLASSES))
    mean, std = normalisation(model)
    torch.save({"format": 1, "backbone": "test_resnet", "classes": CLASSES, "image_size": size, "mean": list(mean),
                "std": list(std), "state_dict": model.state_dict(), "method": "mslg"}, run_dir / "model.pt")
    return run_dir / "model.pt"


@pytest.fixture
def fake_run(workspace, demo, monkeypatch) -> Path:
    """A finished run registered in the workspace store and selected (ROP_RUN)."""
    from engine.store import WorkspaceStore

    run_dir = make_fake_run(workspace / "runs" / "20250101-000000-mslg", demo)
    with WorkspaceStore(workspace / "review.db") as store:
        store.register_run(run_dir, dataset=demo, method="mslg", state="done", pid=None)
    monkeypatch.setenv("ROP_RUN", str(run_dir))
    return run_dir


@pytest.fixture
def at(workspace):
    """An AppTest of the whole app (entry script Home.py), generous timeout for the shared CI machine."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(HOME, default_timeout=30)
