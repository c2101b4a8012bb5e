"""Closing the loop in the app: the queue's ordering choice and its refresh, flag precision, the retrain button and the
before -> after panel."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from app import jobs
from engine.active import refresh, review_value
from engine.cli import build_parser
from engine.commands.run import config_from_args
from engine.data.schema import prob_cols
from engine.store import WorkspaceStore
from tests.app.conftest import CLASSES, make_fake_run
from tests.app.test_app_train import fake_engine  # noqa: F401 - the fixture
from tests.app.texts import unescape


def _open_review(at, order=None):
    at.run()
    at.switch_page("views/review.py").run()
    at.text_input(key="rv_name_input").set_value("Dr Loop")
    next(b for b in at.form_submit_button if b.label == "Start reviewing").click().run()
    assert not at.exception, at.exception
    if order:
        at.segmented_control(key="rv_order").set_value(order).run()
        assert not at.exception, at.exception
    return at


def _flagged(run) -> pd.DataFrame:
    labels = pd.read_csv(run / "labels.csv", keep_default_na=False)
    return labels[labels["flag"] == 1].reset_index(drop=True)


def _shown(at) -> str:
    return next(unescape(m.value).strip("# ") for m in at.markdown if m.value.startswith("####"))


def _decide(workspace, run, decisions: dict[str, str]):
    labels = pd.read_csv(run / "labels.csv", keep_default_na=False).set_index("image")
    with WorkspaceStore(workspace / "review.db") as store:
        for image, label in decisions.items():
            store.add_decision(run, image, reviewer="Dr Loop", new_label=label, old_label=labels.loc[image, "majority"],
                               action="choose_class")


def test_expected_value_is_the_default_order(at, fake_run):
    _open_review(at)
    assert at.segmented_control(key="rv_order").value == "value"
    flagged = _flagged(fake_run)
    major = np.array([CLASSES.index(m) for m in flagged["majority"]])
    value = review_value(flagged[prob_cols(CLASSES)].to_numpy(float), major, ordinal=False)  # metrics: no ordinal key
    assert _shown(at) == flagged.iloc[int(np.argmax(value))]["image"].split("/")[-1]
    by_score = flagged.iloc[int(np.argmax(flagged["flag_score"].to_numpy()))]["image"].split("/")[-1]
    at.segmented_control(key="rv_order").set_value("flag_score").run()
    assert _shown(at) == by_score
    at.segmented_control(key="rv_order").set_value("random").run()
    assert not at.exception, at.exception


def test_value_order_is_refreshed_after_each_batch_of_decisions(at, fake_run, workspace):
    # a prior.csv makes the run refreshable: the estimator re-runs with the decisions as known labels
    labels = pd.read_csv(fake_run / "labels.csv", keep_default_na=False)
    prior = labels[["image", *prob_cols(CLASSES)]].rename(columns={f"p:{c}": f"prior:{c}" for c in CLASSES})
    prior.to_csv(fake_run / "prior.csv", index=False)
    flagged = _flagged(fake_run)
    assert len(flagged) >= 7
    decided = {img: "plus" for img in flagged["image"][:5]}

    def expected(decisions):
        fresh = refresh(fake_run, decisions)
        value = dict(zip(fresh.images, fresh.value, strict=True))
        rest = [i for i in flagged["image"] if i not in decided]
        return max(rest, key=lambda i: (value[i], -rest.index(i))).split("/")[-1]

    _decide(workspace, fake_run, dict(list(decided.items())[:4]))
    _open_review(at)
    four = _shown(at)
    _decide(workspace, fake_run, dict(list(decided.items())[4:]))
    at.session_state["rv_current"] = None
    at.run()
    assert not at.exception, at.exception
    assert _shown(at) == expected(decided)  # the fifth decision triggered the refresh
    assert four in {expected({}), *[i.split("/")[-1] for i in decided]}  # before it, the refresh had no decisions


def test_precision_beside_prediction(at, fake_run, workspace):
    flagged = _flagged(fake_run)
    rows = flagged.iloc[:3]
    other = {m: next(c for c in CLASSES if c != m) for m in CLASSES}
    _decide(workspace, fake_run, {rows.iloc[0]["image"]: other[rows.iloc[0]["majority"]],
                                  rows.iloc[1]["image"]: other[rows.iloc[1]["majority"]],
                                  rows.iloc[2]["image"]: rows.iloc[2]["majority"]})
    _open_review(at)
    predicted = round(100 * rows["flag_score"].astype(float).mean())
    text = " ".join(unescape(c.value) for c in at.caption)
    assert f"2 of 3 reviewed flags changed the label (67 %, 95 % interval 21 %–94 %); the estimate predicted " \
           f"{predicted} %" in text
    at.switch_page("views/export.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Flag precision, realised"] == "67 %" and metrics["Flag precision, predicted"] == f"{predicted} %"


def test_retrain_button_launches_a_warm_run_with_the_reviews(at, fake_run, demo, workspace, fake_engine):  # noqa: F811
    flagged = _flagged(fake_run)
    decided = {img: "plus" for img in flagged["image"][:3]}
    _decide(workspace, fake_run, decided)
    at.run()
    at.switch_page("views/export.py").run()
    assert not at.exception, at.exception
    button = at.button(key="ex_retrain_go")
    assert button.label == "Retrain with my 3 reviews" and not button.disabled
    button.click().run()
    assert not at.exception, at.exception
    assert len(fake_engine) == 1
    argv = fake_engine[0]
    assert argv[argv.index("--from-run") + 1] == str(fake_run.resolve())
    reviewed = pd.read_csv(argv[argv.index("--reviewed") + 1], keep_default_na=False)
    mine = reviewed[reviewed["source"] == "review"]
    assert dict(zip(mine["image"], mine["final_label"], strict=True)) == decided
    with WorkspaceStore(workspace / "review.db") as store:
        new = [r for r in store.list_runs() if (r["config"] or {}).get("form", {}).get("from_run")]
    assert len(new) == 1 and new[0]["run_dir"] == argv[argv.index("--out") + 1]
    # the argv parses with the engine's own parser; the dataset comes from the earlier run's settings
    (fake_run / "model.pt").write_bytes(b"")  # a fake run has no network; the parser only checks the file is there
    cfg = config_from_args(build_parser().parse_args(["run", *argv[1:]]))
    assert cfg.review.from_run == str(fake_run.resolve()) and cfg.data.dataset == str(demo)
    for r in new:
        jobs.cancel(jobs.view(r))


def test_no_reviews_no_retrain(at, fake_run):
    at.run()
    at.switch_page("views/export.py").run()
    assert at.button(key="ex_retrain_go").disabled


@pytest.fixture
def retrained(fake_run, demo, workspace):
    """A finished retrain of fake_run (a fake run folder) with three verified images, registered as its retrain."""
    new = make_fake_run(workspace / "runs" / "20250102-000000-mslg-retrain", demo, seed=1)
    labels = pd.read_csv(new / "labels.csv", keep_default_na=False)
    labels.loc[labels.index[:3], "verified"] = 1
    labels.loc[labels.index[:3], "flag"] = 0
    labels.to_csv(new / "labels.csv", index=False)
    metrics = json.loads((new / "metrics.json").read_text())
    (new / "metrics.json").write_text(json.dumps({**metrics, "meta_acc": 0.85, "test_acc": 0.78,
                                                  "n_flagged": int(labels["flag"].sum()),
                                                  "review": {"from_run": str(fake_run)}}))
    with WorkspaceStore(workspace / "review.db") as store:
        store.register_run(new, dataset=demo, method="mslg", state="done",
                           config={"form": {"from_run": str(fake_run.resolve())}})
    return new


def test_before_after_panel_shows_numbers(at, fake_run, retrained):
    at.run()
    at.switch_page("views/export.py").run()
    assert not at.exception, at.exception
    frame = next(t.value for t in at.table if list(t.value.columns) == ["before", "after"])
    assert (frame.loc["meta accuracy", "before"], frame.loc["meta accuracy", "after"]) == ("80.0 %", "85.0 %")
    assert (frame.loc["test accuracy", "before"], frame.loc["test accuracy", "after"]) == ("75.0 %", "78.0 %")
    assert (frame.loc["verified images", "before"], frame.loc["verified images", "after"]) == ("0", "3")
    old = pd.read_csv(fake_run / "labels.csv", keep_default_na=False)
    new = pd.read_csv(retrained / "labels.csv", keep_default_na=False)
    assert frame.loc["labels changed", "after"] == str(int((old["suggested"] != new["suggested"]).sum()))
    assert frame.loc["images flagged", "after"] == str(int(new["flag"].sum()))
