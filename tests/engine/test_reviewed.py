"""--reviewed files: both formats, every problem named with file and row, and what a verified label does to a run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.data import schema as S
from engine.errors import InputError
from engine.reviewed import COLUMNS, apply_reviewed, read_reviewed, verified_labels

CLASSES = ["normal", "pre-plus", "plus"]
IMAGES = ["a.png", "b.png", "c.png", "d/e.png"]


def _csv(tmp_path, text: str):
    path = tmp_path / "reviewed.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_export_format_takes_only_review_rows_with_provenance(tmp_path):
    path = _csv(tmp_path, "image,final_label,source,votes,majority,reviewer,reviewed_at,note\n"
                          "a.png,normal,consensus,,normal,,,\n"
                          "b.png,plus,review,,pre-plus,Dr A,2026-01-01T10:00:00+00:00,tortuous\n"
                          "c.png,pre-plus,majority,,pre-plus,,,\n"
                          "d/e.png,normal,review,,plus,'=Dr B,2026-01-02T10:00:00+00:00,\n")
    frame = read_reviewed(path, images=IMAGES, classes=CLASSES)
    assert list(frame.columns) == COLUMNS
    assert frame[S.IMAGE].tolist() == ["b.png", "d/e.png"]
    assert frame["label"].tolist() == ["plus", "normal"]
    assert frame.iloc[0][S.REVIEWER] == "Dr A" and frame.iloc[0][S.NOTE] == "tortuous"
    assert frame.iloc[1][S.REVIEWER] == "=Dr B"  # the export's neutralising quote is dropped again


def test_plain_format_and_repeated_identical_rows(tmp_path):
    path = _csv(tmp_path, "image,label,comment\nc.png,plus,x\na.png,pre-plus,\nc.png,plus,again\n")
    frame = read_reviewed(path, images=IMAGES, classes=CLASSES)
    assert frame[S.IMAGE].tolist() == ["c.png", "a.png"] and frame["label"].tolist() == ["plus", "pre-plus"]
    assert (frame[S.REVIEWER] == "").all()


def test_every_problem_is_named_with_its_row(tmp_path):
    path = _csv(tmp_path, "image,label\n"
                          "a.png,plus\n"
                          "zz.png,plus\n"        # row 2: not in the dataset
                          "b.png,plus+\n"        # row 3: unknown class
                          "c.png,\n"             # row 4: empty label
                          "a.png,normal\n"       # row 5: conflicts with row 1
                          ",plus\n")             # row 6: empty image
    with pytest.raises(InputError) as err:
        read_reviewed(path, images=IMAGES, classes=CLASSES)
    text = str(err.value)
    assert "row 2: image 'zz.png' is not in the dataset's votes.csv" in text
    assert "row 3: label 'plus+' is not one of the classes (normal, pre-plus, plus)" in text
    assert "row 4: label is empty" in text
    assert "row 5: image 'a.png' is labelled 'normal' here but 'plus' at row 1" in text
    assert "row 6: image is empty" in text
    assert len(err.value.problems) == 5


@pytest.mark.parametrize("text, message", [
    ("image,verdict\na.png,plus\n", r"neither an export \(image, final_label, source\) nor image,label"),
    ("", "not a readable CSV"),
])
def test_unusable_files(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_reviewed(_csv(tmp_path, text), images=IMAGES, classes=CLASSES)
    with pytest.raises(InputError, match="reviewed-labels file not found"):
        read_reviewed(tmp_path / "nope.csv", images=IMAGES, classes=CLASSES)


def test_verified_labels_become_the_run_labels_and_keep_roles():
    frame = pd.DataFrame({S.IMAGE: IMAGES, S.ROLE: ["meta", "train", "train", "unlabeled"],
                          "_major_idx": [0, 1, 2, -1]})
    reviewed = pd.DataFrame({S.IMAGE: ["b.png", "c.png", "d/e.png"], "label": ["plus", "plus", "normal"]})
    verified = verified_labels(reviewed, frame[S.IMAGE], CLASSES)
    assert verified.tolist() == [-1, 2, 2, 0]
    info = apply_reviewed(frame, verified)
    assert frame["_major_idx"].tolist() == [0, 2, 2, 0]  # the training target is the verified class
    assert frame[S.ROLE].tolist() == ["meta", "train", "train", "unlabeled"]
    assert info == {"n_verified": 3, "by_role": {"meta": 0, "test": 0, "train": 2, "unlabeled": 1},
                    "changed_from_majority": 2}
    assert np.array_equal(verified_labels(reviewed.iloc[:0], IMAGES, CLASSES), [-1, -1, -1, -1])


def test_verified_rows_train_on_the_reviewed_class_not_the_vote_shares():
    """With vote-share targets (`--targets votes`), a verified image trains on a one-hot row of its reviewed class;
    a verified role=unlabeled image (a held-back patient's) stays out of training."""
    from engine.pipeline import PreparedData, _tensors

    frame = pd.DataFrame({S.IMAGE: IMAGES, S.ROLE: ["train", "train", "train", "unlabeled"],
                          "_major_idx": [0, 1, 2, 0]})
    frame["_target_idx"] = np.where(frame[S.ROLE] == "unlabeled", -1, frame["_major_idx"])
    votes = np.array([[0, 0, 1], [1, 2, 1], [2, 2, 2], [0, 0, 0]])
    reviewed = pd.DataFrame({S.IMAGE: ["a.png", "d/e.png"], "label": ["plus", "plus"]})
    frame["_verified"] = verified_labels(reviewed, frame[S.IMAGE], CLASSES)
    apply_reviewed(frame, frame["_verified"].to_numpy())
    data = PreparedData(CLASSES, frame, [], [], votes, True)
    pixels = np.zeros((4, 8, 8, 3), np.uint8)
    train, rows = _tensors(data, pixels, ("train", "unlabeled"), soft=True)
    assert train.targets.tolist() == [2, 1, 2, -1]
    assert train.soft[0].tolist() == [0.0, 0.0, 1.0]  # not the experts' 2-1 split (2/3, 1/3, 0)
    assert train.soft[1].tolist() == pytest.approx([0.0, 2 / 3, 1 / 3])  # unverified: the vote shares
    assert train.soft[3].tolist() == pytest.approx([1 / 3] * 3)  # unlabeled: no target, verified or not
