"""Export page: engine export_labels written into the run folder with the contract columns; review wins."""

from __future__ import annotations

import pandas as pd

from app.components.export_view import EXPORT_NAME, change_table, expert_agreement_with_final
from engine.data.schema import export_columns
from engine.store import WorkspaceStore

CLASSES = ["normal", "pre-plus", "plus"]


def test_export_writes_contract_columns_with_the_review_decision(at, fake_run, workspace):
    labels = pd.read_csv(fake_run / "labels.csv", keep_default_na=False)
    flagged = labels[labels["flag"] == 1].iloc[0]
    other = next(c for c in CLASSES if c != flagged["majority"])
    with WorkspaceStore(workspace / "review.db") as store:
        store.add_decision(fake_run, flagged["image"], reviewer="Dr Test", new_label=other,
                           old_label=flagged["majority"], action="choose_class", note="checked")

    at.run()
    at.switch_page("views/export.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Source: review"] == "1" and metrics["Images"] == str(len(labels))
    assert not [b for b in at.get("download_button")]  # nothing written yet
    at.button(key="ex_write").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]

    out = fake_run / EXPORT_NAME
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == export_columns(CLASSES)
    row = frame.set_index("image").loc[flagged["image"]]
    assert (row["final_label"], row["source"], row["reviewer"], row["note"]) == (other, "review", "Dr Test", "checked")
    assert set(frame["source"]) <= {"consensus", "review", "model", "majority"}
    assert (fake_run / (EXPORT_NAME + ".provenance.json")).is_file()
    assert at.get("download_button")  # offered once written


def test_change_table_and_expert_agreement():
    frame = pd.DataFrame({
        "image": ["a", "b", "c"], "final_label": ["plus", "normal", "plus"], "majority": ["plus", "plus", ""],
        "votes": ["dr_a=plus;dr_b=plus", "dr_a=plus;dr_b=normal", ""]})
    tab = change_table(frame, CLASSES)
    assert tab.loc["plus", "normal"] == 1 and tab.loc["plus", "plus"] == 1 and tab.loc["(none)", "plus"] == 1
    agree = expert_agreement_with_final(frame).set_index("expert")
    assert agree.loc["dr_a", "agrees with final label"] == 0.5
    assert agree.loc["dr_b", "agrees with final label"] == 1.0
    assert agree.loc["dr_b", "agrees with majority"] == 0.5
