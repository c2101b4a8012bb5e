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
    from engine.flags import FLAG_CODES

    codes = {c for cell in _flagged(fake_run)["flag_code"] for c in cell.split(";") if c}
    assert sorted(at.multiselect(key="rv_f_reason").options) == sorted(FLAG_CODES[c] for c in codes)


def test_a_tied_image_shows_its_coded_reasons_and_the_tie_filter_lands_on_it(at, fake_run):
    """Reasons come from flag_code (one box per code, labelled by engine.flags.FLAG_CODES); the English flag_reason
    is shown whole, never split at ';' (which made a tie two boxes and an 'other' reason)."""
    from engine.flags import FLAG_CODES

    _start(at)
    flagged = _flagged(fake_run)
    tied = flagged[flagged["flag_code"].str.split(";").map(lambda cs: "tie" in cs)]
    assert len(tied) >= 2, "the tiny demo's fake run should flag tied images"
    at.multiselect(key="rv_f_reason").set_value(["tie"]).run()
    assert not at.exception, at.exception
    first = tied.sort_values("priority", ascending=False, kind="stable").iloc[0]
    assert _heading(at) == first["image"].split("/")[-1]  # the filter moved to the first tied image
    boxes = [unescape(w.value) for w in at.warning]
    assert boxes == [FLAG_CODES[c] for c in first["flag_code"].split(";")]
    assert first["flag_reason"] in [unescape(c.value) for c in at.caption]  # the words, whole
    assert not any(b == "other" or b.startswith("experts tied;") for b in boxes)


def _table(at, name: str):
    return next(df for df in at.dataframe if (df.key or "").startswith(f"rv_{name}_"))


def _heading(at) -> str:
    return next(unescape(m.value).strip("# ") for m in at.markdown if m.value.startswith("####"))


def test_picking_an_earlier_decision_in_the_history_shows_that_image(at, fake_run):
    _start(at)
    first, second = _flagged(fake_run).iloc[0], _flagged(fake_run).iloc[1]
    at.button(key="rv_majority").click().run()
    assert at.session_state["rv_current"] == second["image"]
    hist = _table(at, "hist")
    at.session_state[hist.key] = {"selection": {"rows": [0], "columns": []}}  # the row of the decision just made
    at.run()
    assert not at.exception, at.exception  # was: StreamlitWidgetAlreadyInstantiatedError on rv_zoom
    assert at.session_state["rv_current"] == first["image"]
    assert _heading(at) == first["image"].split("/")[-1]  # shown in the same run, not one rerun later
    assert any("Current decision" in i.value for i in at.info)
    at.button(key="rv_prev").click().run()  # Previous leads back to where the pick came from
    assert at.session_state["rv_current"] == second["image"]


def test_picking_a_row_of_this_list_shows_that_image(at, fake_run):
    _start(at)
    third = _flagged(fake_run).iloc[2]
    at.select_slider(key="rv_zoom").set_value(2.0).run()
    at.session_state[_table(at, "list").key] = {"selection": {"rows": [2], "columns": []}}
    at.run()
    assert not at.exception, at.exception
    assert _heading(at) == third["image"].split("/")[-1]
    assert at.select_slider(key="rv_zoom").value == 1.0  # a new image starts unzoomed


def test_changing_a_filter_moves_to_the_first_image_of_the_filtered_list(at, fake_run):
    _start(at)
    first, second = _flagged(fake_run).iloc[0], _flagged(fake_run).iloc[1]
    at.button(key="rv_majority").click().run()
    assert at.session_state["rv_current"] == second["image"]
    at.segmented_control(key="rv_f_show").set_value("reviewed").run()
    assert not at.exception, at.exception
    assert _heading(at) == first["image"].split("/")[-1]  # the only reviewed image, not "not in the filtered list"
    assert not any("not in the filtered list" in c.value for c in at.caption)
    at.segmented_control(key="rv_f_show").set_value("to review").run()
    assert _heading(at) == second["image"].split("/")[-1]
    assert not at.button(key="rv_next").disabled


def test_a_skip_keeps_its_note_for_the_decision_and_says_so(at, fake_run, workspace):
    _start(at)
    first = _flagged(fake_run).iloc[0]
    at.text_input(key="rv_note").set_value("image blurred, ask Dr B")
    at.button(key="rv_skip").click().run()
    assert [unescape(t.value) for t in at.toast] == [
        f"Saved: you skipped {first['image'].split('/')[-1]}; it stays in the queue."]
    assert at.text_input(key="rv_note").value == ""  # the next image starts with an empty note
    at.button(key="rv_prev").click().run()
    assert at.session_state["rv_current"] == first["image"]
    assert at.text_input(key="rv_note").value == "image blurred, ask Dr B"
    assert any("Skipped earlier" in i.value for i in at.info)
    at.button(key="rv_accept").click().run()
    rows = _rows(workspace, fake_run)
    assert list(rows["action"]) == ["skip", "accept_suggestion"]
    assert list(rows["note"]) == ["image blurred, ask Dr B"] * 2  # in force with the decision, so export has it
