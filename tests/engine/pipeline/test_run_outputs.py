"""Every registered method runs end-to-end on tiny data and writes the contract outputs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from engine.cli import main
from engine.data import schema as S
from engine.methods import list_methods
from tests.engine.pipeline.tinydata import CLASSES, run_args


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """One run per method, shared by the assertions below."""
    out = {}
    for m in list_methods():
        rd = tmp_path_factory.mktemp("runs") / m
        assert main(run_args(tiny_dataset, rd, m)) == 0, m
        out[m] = rd
    return out


@pytest.mark.parametrize("method", list_methods())
def test_labels_csv_contract(runs, tiny_dataset, method):
    labels = pd.read_csv(runs[method] / "labels.csv", keep_default_na=False)
    votes = pd.read_csv(tiny_dataset / "votes.csv")
    assert list(labels.columns) == S.labels_columns(CLASSES)
    assert sorted(labels[S.IMAGE]) == sorted(votes["image"])  # every image exactly once
    probs = labels[S.prob_cols(CLASSES)].to_numpy(float)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (probs >= 0).all()
    assert list(labels[S.SUGGESTED]) == [CLASSES[k] for k in probs.argmax(1)]
    np.testing.assert_allclose(labels[S.CONFIDENCE], probs.max(1), atol=1e-5)
    flagged = labels[S.FLAG] == 1
    assert (labels.loc[flagged, S.FLAG_REASON] != "").all()
    assert (labels.loc[~flagged, S.FLAG_REASON] == "").all()
    disagree = labels[S.SUGGESTED] != labels[S.MAJORITY]
    assert flagged[disagree].all()  # rule 1: a suggestion different from the majority is always flagged
    assert set(labels[S.ROLE]) <= set(S.ROLES) and {S.META, S.TEST, S.TRAIN} <= set(labels[S.ROLE])
    assert labels.loc[labels[S.ROLE].isin([S.META, S.TEST]), S.CONSENSUS].astype(str).isin(["True"]).all()


@pytest.mark.parametrize("method", list_methods())
def test_metrics_config_status_model(runs, method):
    rd = runs[method]
    metrics = json.loads((rd / "metrics.json").read_text())
    assert metrics["method"] == method
    assert 0 <= metrics["meta_acc"] <= 1 and 0 <= metrics["test_acc"] <= 1
    assert len(metrics["history"]) == 3 and 1 <= metrics["best_epoch"] <= 3
    assert metrics["best_epoch"] >= 1  # the last warm-up epoch (1 here) or a main-phase epoch
    assert metrics["meta_acc"] == max(h["meta_acc"] for h in metrics["history"]
                                      if h["stage"] == "main" or h["epoch"] == 0)
    est = metrics["estimator"]  # the label-estimation stage ran, cross-fitted, with the default expert model
    assert est["folds"] == 2 and len(est["fold_seconds"]) == 2 and est["cost_ratio"] > 0
    assert est["confusion_fit"] == "em" and est["experts"]["mode"] == "correlated"
    config = json.loads((rd / "config.json").read_text())
    assert config["runtime"]["method"] == method and config["versions"]["torch"] == torch.__version__
    assert config["classes"] == CLASSES
    status = json.loads((rd / "status.json").read_text())
    assert status["state"] == "done"
    records = [json.loads(line) for line in (rd / "progress.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"warmup", "main"}
    assert all(r["eta_s"] >= 0 for r in records if "eta_s" in r)
    blob = torch.load(rd / "model.pt", weights_only=True)
    assert blob["classes"] == CLASSES and blob["backbone"] == "test_resnet" and blob["image_size"] == 32


@pytest.mark.parametrize("method", list_methods())
def test_checkpoint_and_model_are_tensors_and_plain_data(runs, method):
    """torch.load(weights_only=True) with torch's default allow-list (no numpy): what `--resume` and `predict`
    can load without ever unpickling code."""
    for name in ("checkpoint.pt", "model.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(runs[method] / name) == [], name
        torch.load(runs[method] / name, weights_only=True)


def test_no_patient_fields_in_any_output(runs):
    for rd in runs.values():
        for f in rd.iterdir():
            data = f.read_bytes()
            assert b"SECRET" not in data and b"ID-12345" not in data, f


def test_confusions_option_reaches_the_estimate(tiny_dataset, tmp_path, runs):
    """--confusions moments is recorded and changes the experts' confusion matrices (same data, same folds)."""
    rd = tmp_path / "moments"
    assert main(run_args(tiny_dataset, rd, "ce", "--confusions", "moments")) == 0
    got = json.loads((rd / "metrics.json").read_text())["estimator"]
    base = json.loads((runs["ce"] / "metrics.json").read_text())["estimator"]
    assert got["confusion_fit"] == "moments" and got["em_iterations"] == 1
    assert json.loads((rd / "config.json").read_text())["estimate"]["confusions"] == "moments"
    assert got["experts"]["confusions"] != base["experts"]["confusions"]
