"""A full run on a (simulated) GPU: DR pretraining, warm-up, a meta method, outputs, then predict (PNG + DICOM) and
export. `tests/fake_cuda.py` gives CUDA's device checks on a machine without a GPU, so this runs in CI."""

import json

import pandas as pd
import pytest
import torch

from engine.cli import main
from engine.data import schema as S
from engine.export import export_labels
from engine.predict import predict_images
from tests.engine.pipeline.tinydata import CLASSES, make_aux, run_args
from tests.fake_cuda import FakeCuda


@pytest.fixture
def fake_gpu(monkeypatch):
    """`torch.cuda` says a GPU is there (without bf16, so no autocast); tensors on "cuda" are simulated."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with FakeCuda() as fc:
        yield fc


@pytest.mark.slow
def test_pretrain_run_predict_and_export_on_cuda(tiny_dataset, tmp_path, fake_gpu):
    aux = make_aux(tmp_path / "aux")
    rd = tmp_path / "run"
    assert main(run_args(tiny_dataset, rd, "mslg", "--device", "cuda", "--pretrain", str(aux), "--epochs", "2",
                         "--warmup-epochs", "1", "--max-steps", "2")) == 0
    assert json.loads((rd / "config.json").read_text())["device"] == "cuda"
    assert json.loads((rd / "status.json").read_text())["state"] == "done"
    images = [tiny_dataset / "img"]  # every image of the dataset: PNGs and DICOMs
    pred = predict_images(rd, images, device="cuda")
    assert list(pred.columns) == S.predict_columns(CLASSES) and pred[S.IMAGE].str.endswith(".dcm").sum() == 3
    out = export_labels(rd)
    assert len(out) == len(pd.read_csv(tiny_dataset / "votes.csv"))


def test_finite_difference_jvp_under_bf16_is_refused_before_anything_is_written(tiny_dataset, tmp_path, fake_gpu,
                                                                                 monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    rd = tmp_path / "run"
    code = main(run_args(tiny_dataset, rd, "mslg", "--device", "cuda", "--mslg-meta-jvp", "finite-difference"))
    assert code == 2 and "finite-difference needs float32" in capsys.readouterr().err
    assert not rd.exists()
    # with AMP off the same options run (float32)
    assert main(run_args(tiny_dataset, rd, "mslg", "--device", "cuda", "--mslg-meta-jvp", "finite-difference",
                         "--amp", "false", "--epochs", "2", "--max-steps", "2", "--folds", "0")) == 0
