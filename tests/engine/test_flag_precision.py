"""Realised vs predicted flag precision on a store with known decisions, in `python -m engine metrics` too."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from engine import cli
from engine.data import schema as S
from engine.export import read_labels
from engine.flag_precision import flag_precision, wilson_interval
from engine.store import WorkspaceStore

CLASSES = ["normal", "pre-plus", "plus"]
#          image    role     majority  flag score   verified
ROWS = [("f1.png", "train", "normal", 1, 0.9, 0),
        ("f2.png", "train", "normal", 1, 0.8, 0),
        ("f3.png", "train", "plus", 1, 0.7, 0),
        ("f4.png", "train", "pre-plus", 1, 0.6, 0),
        ("f5.png", "train", "plus", 1, 0.5, 0),
        ("u1.png", "train", "normal", 0, 0.2, 0),
        ("u2.png", "train", "plus", 0, 0.1, 0),
        ("m1.png", "meta", "normal", 0, 0.0, 0),
        ("v1.png", "train", "plus", 0, 0.0, 1),
        ("n1.png", "unlabeled", "", 0, 0.0, 0)]


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    frame = pd.DataFrame([{S.IMAGE: i, S.ROLE: r, S.VOTES: "", S.MAJORITY: m, S.CONSENSUS: 0,
                           **{S.prob_col(c): 1 / 3 for c in CLASSES}, S.SUGGESTED: m or "normal", S.CONFIDENCE: 0.4,
                           S.FLAG: f, S.FLAG_CODE: "other_class" if f else "", S.FLAG_REASON: "", S.FLAG_SCORE: s,
                           S.PRIORITY: s, **{S.method_prob_col(c): 1 / 3 for c in CLASSES}, S.VERIFIED: v}
                          for i, r, m, f, s, v in ROWS], columns=S.labels_columns(CLASSES))
    frame.to_csv(run / "labels.csv", index=False)
    (run / "metrics.json").write_text(json.dumps({"method": "ce", "meta_acc": 0.9, "test_acc": 0.8, "n_flagged": 5,
                                                  "expected_wrong_majority": 3.8}))
    return run


@pytest.fixture
def store(tmp_path, run):
    with WorkspaceStore(tmp_path / "ws.db") as s:
        d = dict(reviewer="Dr A", action="choose_class")
        s.add_decision(run, "f1.png", new_label="plus", old_label="normal", **d)      # changed
        s.add_decision(run, "f2.png", new_label="pre-plus", old_label="normal", **d)  # changed ...
        s.add_decision(run, "f2.png", new_label="normal", old_label="pre-plus", **d)  # ... then kept after all
        s.add_decision(run, "f3.png", new_label="pre-plus", old_label="plus", **d)    # changed
        s.add_decision(run, "f4.png", new_label=None, old_label="pre-plus", reviewer="Dr A", action="skip")
        s.add_decision(run, "u1.png", new_label="pre-plus", old_label="normal", **d)  # an unflagged one, changed
        yield s


def test_realised_and_predicted_precision(run, store):
    labels, _ = read_labels(run / "labels.csv")
    p = flag_precision(labels, store.current_decisions(run))
    assert p["n_flagged"] == 5
    assert (p["reviewed_flagged"], p["changed_flagged"]) == (3, 2)  # f1, f2 (kept in the end), f3; the skip is none
    assert p["realised_precision"] == pytest.approx(2 / 3)
    assert p["predicted_precision"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)  # the same three images
    assert p["predicted_precision_queue"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.6 + 0.5) / 5)
    assert (p["reviewed_unflagged"], p["changed_unflagged"]) == (1, 1)
    # undecided reviewable: f4 (skipped), f5, u2; meta, verified and ungraded rows are not reviewable
    assert p["n_undecided"] == 3 and p["errors_left"] == pytest.approx(0.6 + 0.5 + 0.1)
    lo, hi = p["realised_interval"]
    assert lo == pytest.approx(0.2077, abs=1e-3) and hi == pytest.approx(0.9385, abs=1e-3)  # Wilson, 2 of 3


def test_no_reviews_yet(run):
    labels, _ = read_labels(run / "labels.csv")
    p = flag_precision(labels, pd.DataFrame(columns=["image", "new_label"]))
    assert p["realised_precision"] is None and p["predicted_precision"] is None and p["realised_interval"] is None
    assert p["errors_left"] == pytest.approx(0.9 + 0.8 + 0.7 + 0.6 + 0.5 + 0.2 + 0.1)
    assert wilson_interval(0, 0) is None


def test_metrics_command_shows_realised_beside_predicted(run, store, capsys):
    assert cli.main(["metrics", str(run), "--store", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "meta accuracy 90.0 %, test accuracy 80.0 %" in out
    assert "realised 2/3 = 67 % (95 % interval 21–94 %) vs predicted 80 % for the same images" in out
    assert "predicted precision of the whole queue (5 flagged): 70 %" in out
    assert "wrong majority labels expected in the 3 undecided images: 1.2" in out
    assert cli.main(["metrics", str(run), "--store", str(store.path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["flag_precision"]["changed_flagged"] == 2 and data["before_after"] is None
