"""Closing the loop end to end on the tiny dataset: review decisions -> export -> `run --reviewed --from-run`."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from engine import cli
from engine.active import refresh
from engine.data import schema as S
from engine.export import export_labels
from engine.safe_load import torch_load
from engine.store import WorkspaceStore
from engine.warmstart import WARM_EPOCH_FRACTION, WARM_LR_FACTOR
from tests.engine.pipeline.tinydata import CLASSES, run_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loop(tiny_dataset, tmp_path_factory):
    """A first run, three review decisions in a store, their export, and a warm retrain with them."""
    root = tmp_path_factory.mktemp("loop")
    old, new = root / "old", root / "new"
    assert cli.main(run_args(tiny_dataset, old, "ce")) == 0
    labels = pd.read_csv(old / "labels.csv", keep_default_na=False)
    train = labels[labels[S.ROLE] == S.TRAIN]
    picked = train.sort_values(S.FLAG_SCORE, ascending=False).head(3)
    decided = {}
    with WorkspaceStore(root / "ws.db") as store:
        for i, (image, majority) in enumerate(zip(picked[S.IMAGE], picked[S.MAJORITY], strict=True)):
            label = CLASSES[(CLASSES.index(majority) + 1) % 3] if i < 2 else majority  # 2 changed, 1 kept
            store.add_decision(old, image, reviewer="Dr Loop", new_label=label, old_label=majority,
                               action="choose_class", note=f"note {i}")
            decided[image] = label
        export_labels(old, store=store, out=root / "reviewed.csv")
    assert cli.main(["run", "--out", str(new), "--from-run", str(old), "--reviewed", str(root / "reviewed.csv")]) == 0
    return {"old": old, "new": new, "decided": decided, "root": root, "store": root / "ws.db"}


def _labels(run):
    return pd.read_csv(run / "labels.csv", keep_default_na=False).set_index(S.IMAGE)


def test_reviewed_images_are_verified_with_their_label(loop):
    new = _labels(loop["new"])
    verified = new[new[S.VERIFIED] == 1]
    assert sorted(verified.index) == sorted(loop["decided"])
    for image, label in loop["decided"].items():
        row = new.loc[image]
        assert row[S.SUGGESTED] == label and row[S.prob_col(label)] == 1.0 and row[S.FLAG] == 0
        assert row[S.MAJORITY] == _labels(loop["old"]).loc[image, S.MAJORITY]  # the experts' majority is kept
    kept = pd.read_csv(loop["new"] / "reviewed.csv", keep_default_na=False)
    assert set(kept[S.IMAGE]) == set(loop["decided"]) and set(kept[S.REVIEWER]) == {"Dr Loop"}
    review = json.loads((loop["new"] / "metrics.json").read_text())["review"]
    assert review["n_verified"] == 3 and review["changed_from_majority"] == 2 and review["by_role"]["train"] == 3
    assert review["from_run"] == str(loop["old"].resolve())


def test_retrain_inherits_settings_and_shortens_the_schedule(loop):
    old = json.loads((loop["old"] / "config.json").read_text())
    new = json.loads((loop["new"] / "config.json").read_text())
    for section, key in (("runtime", "method"), ("model", "backbone"), ("data", "image_size"),
                         ("data", "classes"), ("data", "dataset"), ("estimate", "folds")):
        assert new[section][key] == old[section][key], (section, key)
    assert new["data"]["roles"] == str(loop["old"].resolve() / "roles.csv")
    assert (loop["new"] / "roles.csv").read_text() == (loop["old"] / "roles.csv").read_text()  # same meta/test sets
    s_old, s_new = old["schedule"], new["schedule"]
    assert s_new["epochs"] == math.ceil(WARM_EPOCH_FRACTION * s_old["epochs"]) and s_new["warmup_epochs"] == 0
    assert s_new["lr"] == pytest.approx(WARM_LR_FACTOR * s_old["lr"]) and s_new["lr_schedule"] == "cosine"
    assert new["warm_start"]["base_schedule"] == s_old  # a retrain of this retrain shortens the first schedule


def test_folds_warm_start_on_the_same_images(loop):
    old = torch_load(loop["old"] / "crossfit.pt")
    new = torch_load(loop["new"] / "crossfit.pt")
    assert set(old) == set(new) == {"0", "1"}
    for f in old:
        assert old[f]["train_images"] == new[f]["train_images"]  # every probability stays out-of-sample
        assert old[f]["meta_images"] == new[f]["meta_images"]
        assert set(old[f]["model"]) and all(isinstance(v, torch.Tensor) for v in old[f]["model"].values())
    metrics = json.loads((loop["new"] / "metrics.json").read_text())
    assert metrics["estimator"]["folds_warm_started"] is True


def test_a_near_zero_learning_rate_keeps_the_earlier_model(loop):
    """The warm start loads OLD's weights: with (almost) no learning they come out unchanged."""
    out = loop["root"] / "still"
    assert cli.main(["run", "--out", str(out), "--from-run", str(loop["old"]), "--lr", "1e-12", "--folds", "0"]) == 0
    a = torch_load(loop["old"] / "model.pt")["state_dict"]
    b = torch_load(out / "model.pt")["state_dict"]
    weights = [k for k in a if k.endswith("weight") and a[k].ndim > 1]
    assert weights and all(torch.allclose(a[k], b[k], atol=1e-6) for k in weights)


def test_export_of_the_retrain_keeps_the_reviews(loop):
    frame = export_labels(loop["new"]).set_index(S.IMAGE)
    for image, label in loop["decided"].items():
        assert (frame.loc[image, S.FINAL_LABEL], frame.loc[image, S.SOURCE]) == (label, "review")
        assert frame.loc[image, S.REVIEWER] == "Dr Loop" and frame.loc[image, S.NOTE].startswith("note ")
    assert (frame[S.SOURCE] == "review").sum() == 3


def test_refresh_reproduces_the_run_and_holds_decisions(loop):
    run = loop["old"]
    labels = _labels(run)
    classes = CLASSES
    same = refresh(run)
    assert np.allclose(same.posterior, labels[[S.prob_col(c) for c in classes]].to_numpy(float), atol=1e-4)
    image = next(i for i in labels.index if labels.loc[i, S.ROLE] == S.TRAIN and labels.loc[i, S.FLAG] == 1)
    later = refresh(run, {image: "plus"})
    row = later.images.index(image)
    assert later.posterior[row].tolist() == [0.0, 0.0, 1.0] and later.value[row] == 0.0 and later.known[row]
    assert not np.allclose(later.posterior, same.posterior)


def test_refresh_uses_the_runs_confusion_fit(tiny_dataset, tmp_path):
    """A run estimated with --confusions moments is refreshed with moments too (EM would give other posteriors)."""
    run = tmp_path / "moments"
    assert cli.main(run_args(tiny_dataset, run, "ce", "--confusions", "moments")) == 0
    labels = _labels(run)
    same = refresh(run)
    assert np.allclose(same.posterior, labels[[S.prob_col(c) for c in CLASSES]].to_numpy(float), atol=1e-4)


def test_metrics_command_shows_before_and_after(loop, capsys):
    assert cli.main(["metrics", str(loop["new"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["measure"]: r for r in data["before_after"]}
    assert rows["verified images"]["before"] == 0 and rows["verified images"]["after"] == 3
    old, new = _labels(loop["old"]), _labels(loop["new"])
    assert rows["labels changed"]["after"] == int((old[S.SUGGESTED] != new.loc[old.index, S.SUGGESTED]).sum())
    assert rows["labels changed"]["after"] >= sum(old.loc[i, S.SUGGESTED] != c for i, c in loop["decided"].items())
    assert rows["test accuracy"]["before"] is not None and rows["test accuracy"]["after"] is not None
    assert cli.main(["metrics", str(loop["old"]), "--store", str(loop["store"])]) == 0
    assert "realised 2/3 = 67 %" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--from-run", "{root}/nowhere"], "--from-run folder not found"),
    (["--from-run", "{old}", "--image-size", "40"], "was trained at 32 px, this run uses 40 px"),
    (["--from-run", "{old}", "--backbone", "resnet18"], "is a 'test_resnet' network"),
    (["--reviewed", "{root}/bad.csv"], "row 1: image 'nope.png' is not in the dataset's votes.csv"),
])
def test_bad_review_input_writes_nothing(loop, tiny_dataset, capsys, extra, message):
    (loop["root"] / "bad.csv").write_text("image,label\nnope.png,plus\n")
    out = loop["root"] / "refused"
    extra = [e.format(root=loop["root"], old=loop["old"]) for e in extra]
    args = run_args(tiny_dataset, out, "ce") if "--from-run" not in extra else ["run", "--out", str(out)]
    assert cli.main([*args, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
