"""A crafted .pt file (a pickle whose payload runs code when unpickled) is refused everywhere the tool loads one:
predict's model.pt, --weights and the --resume checkpoint. The payload never runs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.errors import InputError
from engine.safe_load import torch_load
from tests.engine.pipeline.tinydata import CLASSES, run_args


class Payload:
    """Unpickling this calls exec(): it writes `marker`, standing in for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _evil(path: Path, marker: Path, **plain) -> Path:
    torch.save({**plain, "extra": Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload_ran"


def test_the_payload_does_run_with_weights_only_false(tmp_path, marker):
    """The threat is real: the file below executes its payload when loaded the unsafe way."""
    torch.load(_evil(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.read_text() == "pwned"


def test_torch_load_refuses_the_payload(tmp_path, marker):
    with pytest.raises(InputError, match=r"x\.pt: refused to load this model file: it holds Python objects") as info:
        torch_load(_evil(tmp_path / "x.pt", marker), what="model file")
    assert "(it refers to exec)" in str(info.value) and "add_safe_globals" not in str(info.value)
    assert not marker.exists()


def test_plain_data_tensors_and_numpy_arrays_load(tmp_path):
    blob = {"a": torch.arange(3), "b": [1, 2.5, "x", None, (1, 2)], "c": np.arange(4.0)}
    torch.save(blob, tmp_path / "ok.pt")
    got = torch_load(tmp_path / "ok.pt")
    assert torch.equal(got["a"], blob["a"]) and got["b"] == blob["b"]
    np.testing.assert_array_equal(got["c"], blob["c"])  # old O2U checkpoints held numpy flag scores
    buf = io.BytesIO()
    torch.save({"x": torch.ones(2)}, buf)
    buf.seek(0)
    assert torch.equal(torch_load(buf)["x"], torch.ones(2))


def test_predict_refuses_a_crafted_model(tiny_dataset, tmp_path, marker, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _evil(run / "model.pt", marker, backbone="test_resnet", classes=CLASSES, image_size=32, mean=[0.5] * 3,
          std=[0.5] * 3, state_dict={})
    out = tmp_path / "pred.csv"
    image = next(tiny_dataset.glob("img/*.png"))
    assert main(["predict", str(run), str(image), "--out", str(out)]) == 2
    assert "model.pt: refused to load this model file" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_run_refuses_crafted_weights(tiny_dataset, tmp_path, marker, capsys):
    weights = _evil(tmp_path / "w.pt", marker, state_dict={})
    out = tmp_path / "run"
    assert main(run_args(tiny_dataset, out, "ce", "--weights", str(weights))) == 2
    assert "w.pt: refused to load this weight file" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_resume_refuses_a_crafted_checkpoint(tiny_dataset, tmp_path, marker, capsys):
    out = tmp_path / "run"
    out.mkdir()
    _evil(out / "checkpoint.pt", marker, model={}, optimizer={}, method={}, fit={})
    assert main(run_args(tiny_dataset, out, "ce", "--resume")) == 2
    assert "checkpoint.pt: refused to load this checkpoint" in capsys.readouterr().err
    assert not marker.exists() and not (out / "labels.csv").exists()
