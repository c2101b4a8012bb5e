"""Review page: the queue of flagged images, one audit row per action, going back and changing a decision."""

from __future__ import annotations

import pandas as pd

from engine.store import WorkspaceStore
from tests.app.texts import unescape


def _start(at, name: str = "Dr Test", order: str | None = "flag_score"):
    """Open the Review page as `name`; the queue in `order` (these tests follow the flag-score order)."""
    at.run()
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    at.text_input(key="rv_name_input").set_value(name)
    next(b for b in at.form_submit_button if b.label == "Start reviewing").click().run()
    assert not at.exception, at.exception
    if order is not None:
        at.segmented_control(key="rv_order").set_value(order).run()
        assert not at.exception, at.exception
    return at


def _progress(at) -> str:
    return at.get("progress")[0].proto.text


def _rows(workspace, run) -> pd.DataFrame:
    with WorkspaceStore(workspace / "review.db") as store:
        return store.history(run)


def _flagged(run) -> pd.DataFrame:
    labels = pd.read_csv(run / "labels.csv", keep_default_na=False)
    return labels[labels["flag"] == 1].sort_values("flag_score", ascending=False, kind="stable")


def test_reviewer_name_is_asked_once(at, fake_run):
    at.run()
    at.switch_page("views/review.py").run()
    assert at.text_input(key="rv_name_input") is not None
    assert not [b for b in at.button if b.key == "rv_accept"]  # no actions before the name is given
    _start(at)
    assert at.session_state["reviewer"] == "Dr Test"
    at.run()
    assert "Reviewing as **Dr Test**" in " ".join(c.value for c in at.caption)


def test_queue_starts_with_the_highest_flag_score(at, fake_run):
    _start(at)
    top = _flagged(fake_run).iloc[0]["image"]
    assert at.session_state.get("rv_current") in (None, top)
    assert any(top.split("/")[-1] in unescape(m.value) for m in at.markdown)
    assert _progress(at) == f"**0 of {len(_flagged(fake_run))} reviewed**"


def test_each_action_writes_exactly_one_row_and_advances(at, fake_run, workspace):
    _start(at)
    flagged = _flagged(fake_run)
    first, second = flagged.iloc[0], flagged.iloc[1]
    other = next(c for c in ["normal", "pre-plus", "plus"] if c != first["majority"])
    at.text_input(key="rv_note").set_value("vessels look tortuous")
    at.button(key=f"rv_class_{['normal', 'pre-plus', 'plus'].index(other)}").click().run()
    assert not at.exception, at.exception
    rows = _rows(workspace, fake_run)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["image"], row["action"], row["new_label"], row["old_label"], row["reviewer"], row["note"]) == (
        first["image"], "choose_class", other, first["majority"], "Dr Test", "vessels look tortuous")
    assert at.session_state["rv_current"] == second["image"]  # advanced to the next flagged image
    assert at.session_state["rv_note"] == ""

    at.button(key="rv_majority").click().run()
    rows = _rows(workspace, fake_run)
    assert len(rows) == 2 and rows.iloc[1]["action"] == "keep_majority" and rows.iloc[1]["image"] == second["image"]

    at.button(key="rv_skip").click().run()
    rows = _rows(workspace, fake_run)
    assert len(rows) == 3 and rows.iloc[2]["action"] == "skip" and pd.isna(rows.iloc[2]["new_label"])
    assert _progress(at).startswith("**2 of")  # a skip is not a decision


def test_going_back_and_changing_a_decision_keeps_the_history(at, fake_run, workspace):
    _start(at)
    first = _flagged(fake_run).iloc[0]
    at.button(key="rv_majority").click().run()
    at.button(key="rv_prev").click().run()
    assert not at.exception, at.exception
    assert at.session_state["rv_current"] == first["image"]
    assert any("Current decision" in i.value for i in at.info)
    at.button(key="rv_accept").click().run()
    rows = _rows(workspace, fake_run)
    mine = rows[rows["image"] == first["image"]]
    assert list(mine["action"]) == ["keep_majority", "accept_suggestion"]  # append-only: both kept
    assert mine.iloc[1]["old_label"] == first["majority"]
    with WorkspaceStore(workspace / "review.db") as store:
        current = store.current_decisions(fake_run)
    assert current.set_index("image").loc[first["image"], "new_label"] == first["suggested"]


def test_filters_by_reason_and_class(at, fake_run):
    _start(at)
    at.multiselect(key="rv_f_class").set_value(["plus"]).run()
    assert not at.exception, at.exception
    labels = _flagged(fake_run)
    labels["name"] = labels["image"].str.split("/").str[-1]
    shown = next(unescape(m.value).strip("# ") for m in at.markdown if m.value.startswith("####"))
    row = labels.set_index("name").loc[shown]
    assert "plus" in (row["majority"], row["suggested"])
    reasons = at.multiselect(key="rv_f_reason").options
    assert reasons and all(r in {"model disagrees with the votes", "split vote, uncertain soft label", "tied vote",
                                 "other"} for r in reasons)
