"""Resume equivalence, DR pretraining with head swap, predict round-trip (PNG + DICOM), NaN handling."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from engine import atomic
from engine.cli import main
from engine.data import schema as S
from tests.engine.pipeline.tinydata import CLASSES, make_aux, run_args


@pytest.mark.parametrize(("method", "how"), [("mslg", "flags"), ("metalabelnet", "config.json")])
def test_resume_after_interrupt_gives_identical_soft_labels(tiny_dataset, tmp_path, monkeypatch, method, how):
    """Resumed with the same flags, or (as the app's Resume button does) with the run's own config.json."""
    full = tmp_path / "full"
    assert main(run_args(tiny_dataset, full, method, "--epochs", "4", "--warmup-epochs", "1")) == 0

    # Interrupt right after the checkpoint of epoch 3 (the 2nd main-phase epoch) is written, as Ctrl-C would.
    real_save = atomic.torch_save
    calls = {"n": 0}

    def save_then_interrupt(path, obj):
        real_save(path, obj)
        if str(path).endswith("checkpoint.pt"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt

    part = tmp_path / "part"
    monkeypatch.setattr(atomic, "torch_save", save_then_interrupt)
    assert main(run_args(tiny_dataset, part, method, "--epochs", "4", "--warmup-epochs", "1")) == 130
    assert json.loads((part / "status.json").read_text())["state"] == "cancelled"
    assert not (part / "labels.csv").exists()
    monkeypatch.setattr(atomic, "torch_save", real_save)

    if how == "flags":
        resume = run_args(tiny_dataset, part, method, "--epochs", "4", "--warmup-epochs", "1", "--resume")
    else:
        resume = ["run", "--config", str(part / "config.json"), "--resume"]
    assert main(resume) == 0
    a = pd.read_csv(full / "labels.csv", keep_default_na=False)
    b = pd.read_csv(part / "labels.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(a, b)
    ha = json.loads((full / "metrics.json").read_text())["history"]
    hb = json.loads((part / "metrics.json").read_text())["history"]
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


def test_resume_refuses_changed_settings_and_missing_checkpoint(tiny_dataset, tmp_path, capsys):
    rd = tmp_path / "r"
    assert main(run_args(tiny_dataset, rd / "none", "ce", "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(run_args(tiny_dataset, rd, "ce")) == 0
    assert main(run_args(tiny_dataset, rd, "ce", "--lr", "0.01", "--resume")) == 2
    assert "schedule.lr" in capsys.readouterr().err


def test_dr_pretraining_then_fresh_task_head(tiny_dataset, tmp_path):
    aux = make_aux(tmp_path / "aux")
    rd = tmp_path / "run"
    assert main(run_args(tiny_dataset, rd, "ce", "--pretrain", str(aux), "--pretrain-epochs", "1")) == 0
    pre = torch.load(rd / "pretrain.pt", weights_only=True)
    assert pre["classes"] == ["no_dr", "dr"]
    head_w = [k for k in pre["state_dict"] if k.endswith("weight") and pre["state_dict"][k].ndim == 2][-1]
    assert pre["state_dict"][head_w].shape[0] == 2
    final = torch.load(rd / "model.pt", weights_only=True)["state_dict"]
    assert final[head_w].shape[0] == len(CLASSES)  # head replaced for the task classes
    log = (rd / "log.txt").read_text()
    assert "DR pretraining" in log and "pretrain epoch 1/1" in log


def test_predict_round_trip_png_and_dicom(tiny_dataset, tmp_path):
    rd = tmp_path / "run"
    assert main(run_args(tiny_dataset, rd, "ce")) == 0
    labels = pd.read_csv(rd / "labels.csv", keep_default_na=False)
    evaluated = labels[labels[S.ROLE].isin([S.META, S.TEST])]
    images = [str(tiny_dataset / p) for p in evaluated[S.IMAGE]]
    dicoms = [str(p) for p in sorted(tiny_dataset.glob("img/*.dcm"))]
    out = tmp_path / "pred.csv"
    extra = [d for d in dicoms if d not in images]
    assert main(["predict", str(rd), *images, *extra, "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    assert list(pred.columns) == S.predict_columns(CLASSES)
    assert pred[S.IMAGE].str.endswith(".dcm").sum() == len(dicoms) >= 1
    # the same model and preprocessing as the run's own evaluation of meta/test rows (method_p: the model's view)
    by_image = pred.set_index(S.IMAGE)
    for _, row in evaluated.iterrows():
        got = by_image.loc[str(tiny_dataset / row[S.IMAGE]), S.prob_cols(CLASSES)].to_numpy(float)
        np.testing.assert_allclose(got, row[[S.method_prob_col(c) for c in CLASSES]].to_numpy(float), atol=1e-4)
    assert b"SECRET" not in out.read_bytes()


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tiny_dataset, tmp_path, capsys):
    rd = tmp_path / "nan"
    code = main(run_args(tiny_dataset, rd, "mslg", "--lr", "1e30"))
    err = capsys.readouterr().err
    assert code == 2
    assert "NaN/inf" in err and "step" in err
    assert json.loads((rd / "status.json").read_text())["state"] == "failed"


def test_a_lookahead_that_breaks_the_model_is_backed_off_and_logged(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(tiny_dataset, out, "mslg", "--epochs", "2", "--warmup-epochs", "1",
                         "--mslg-alpha", "10000")) == 0
    log = (out / "log.txt").read_text()
    assert "note: the look-ahead step broke the model" in log and "--mslg-alpha" in log
    main_epoch = json.loads((out / "metrics.json").read_text())["history"][1]
    assert main_epoch["stage"] == "main" and main_epoch["alpha"] < 10000


class _Killed(BaseException):
    """Stands in for kill -9: nothing in the pipeline catches it, so status.json keeps saying 'running'."""


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_killed_in_its_first_epoch_says_how_to_start_over(tiny_dataset, tmp_path, monkeypatch, capsys):
    import engine.pipeline as pipeline

    def killed(*args, **kwargs):
        raise _Killed

    out = tmp_path / "run"
    monkeypatch.setattr(pipeline, "load_pixels", killed)
    with pytest.raises(_Killed):
        main(run_args(tiny_dataset, out, "ce"))
    monkeypatch.undo()
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "running" and not (out / "checkpoint.pt").exists()
    status["pid"] = _dead_pid()  # the killed process is gone
    (out / "status.json").write_text(json.dumps(status))

    assert main(run_args(tiny_dataset, out, "ce", "--resume")) == 2
    err = capsys.readouterr().err
    assert "nothing to resume: no checkpoint.pt in the run folder" in err
    assert f"start over: delete the folder {out} (or pass another --out) and run again without --resume" in err
    marked = json.loads((out / "status.json").read_text())
    assert marked["state"] == "failed" and f"(pid {status['pid']}) stopped without finishing" in marked["message"]

    assert main(run_args(tiny_dataset, out, "ce")) == 2  # the two messages no longer point at each other
    err = capsys.readouterr().err
    assert "run folder exists and is not empty" in err and "--resume" not in err.replace("without --resume", "")
    assert "start over: delete the folder" in err


def test_a_live_run_is_not_marked_failed(tmp_path):
    import subprocess
    import sys

    from engine.rundir import RunDir

    rd = RunDir(tmp_path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "engine", "run"])  # like a run
    try:
        rd.write_status("running", pid=live.pid)
        assert rd.mark_if_dead() is None and rd.read_status()["state"] == "running"
    finally:
        live.kill()
        live.wait()
    rd.write_status("running", pid=_dead_pid())
    assert rd.mark_if_dead()["state"] == "failed"
    rd.write_status("done", pid=_dead_pid())
    assert rd.mark_if_dead() is None and rd.read_status()["state"] == "done"
