"""Meta-set editor: propose (engine make_split), edit by hand (whole patients move), save roles (file + store)."""

from __future__ import annotations

import pandas as pd

from engine.data.aggregate import aggregate
from engine.data.split import read_roles
from engine.data.votes import read_votes
from engine.store import WorkspaceStore

CLASSES = ["normal", "pre-plus", "plus"]


def _propose(at):
    at.run()
    at.switch_page("views/meta.py").run()
    assert "No meta set yet" in at.info[0].value
    next(b for b in at.form_submit_button if b.label.startswith("Propose")).click().run()
    assert not at.exception, at.exception
    return at


def _counts(at) -> pd.DataFrame:
    return at.dataframe[0].value


def test_propose_then_edit_changes_roles_and_save_writes_them(at, demo, workspace):
    _propose(at)
    counts = _counts(at)
    n_meta = int(counts.loc["meta", "total"])
    assert n_meta > 0
    slot = at.session_state["meta_roles"]
    assert slot["source"] == "proposed" and slot["dirty"]

    box = at.checkbox[0]  # first member of the meta set, ticked
    assert box.value is True
    image = box.key.split("_meta_", 1)[1]
    box.uncheck().run()
    assert not at.exception, at.exception
    roles = at.session_state["meta_roles"]["roles"]
    assert roles[image] == "train"
    table = read_votes(demo, classes=CLASSES)
    patient = table.frame.set_index("image").loc[image, "patient_id"]
    same_patient = table.frame.loc[table.frame["patient_id"] == patient, "image"]
    assert all(roles[i] != "meta" for i in same_patient)  # the patient's other eye left the meta set too
    assert int(_counts(at).loc["meta", "total"]) < n_meta  # live counts

    at.button(key="meta_save").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    files = list((workspace / "roles").glob("*.csv"))
    assert len(files) == 1
    saved = read_roles(files[0], table)  # the engine accepts it, as `--roles` will
    assert saved[table.frame["image"] == image].iloc[0] == "train"
    with WorkspaceStore(workspace / "review.db") as store:
        assert store.load_roles(demo)[image] == "train"
    assert at.session_state["meta_roles"]["source"] == "saved"


def test_adding_a_candidate_moves_it_into_the_meta_set(at, demo):
    _propose(at)
    n_meta = int(_counts(at).loc["meta", "total"])
    at.segmented_control(key="meta_show").set_value("candidates").run()
    assert not at.exception, at.exception
    table = read_votes(demo, classes=CLASSES)
    frame = table.frame.assign(consensus=aggregate(table)["consensus"].to_numpy())
    whole = frame.groupby("patient_id")["consensus"].transform("all")  # patients whose images all have consensus
    addable = set(frame.loc[whole, "image"])
    unticked = [c for c in at.checkbox if not c.value and c.key.split("_meta_", 1)[1] in addable]
    assert unticked, "the tiny demo should have a consensus patient outside the meta set"
    image = unticked[0].key.split("_meta_", 1)[1]
    unticked[0].check().run()
    assert not at.exception, at.exception
    assert at.session_state["meta_roles"]["roles"][image] == "meta"
    assert int(_counts(at).loc["meta", "total"]) > n_meta


def test_few_meta_images_per_class_warns(at, demo):
    _propose(at)
    warnings = " ".join(w.value for w in at.warning)
    assert "fewer than 5" in warnings  # 24 images cannot give 5 meta images per class


def test_a_short_class_names_the_held_back_patients_and_the_override_adds_them(at, demo, workspace):
    """A consensus image whose patient's other eye has no consensus cannot be ticked; the page lists such patients
    for the short classes and adds one on request: consensus eyes to meta, the other eyes to unlabeled."""
    _propose(at)
    table = read_votes(demo, classes=CLASSES)
    agg = aggregate(table)
    frame = table.frame.assign(consensus=agg["consensus"].to_numpy(), majority=agg["majority"].to_numpy())
    roles = at.session_state["meta_roles"]["roles"]
    mixed = frame.groupby("patient_id")["consensus"].transform(lambda c: c.any() and not c.all())
    expected = sorted(pid for pid in frame.loc[mixed, "patient_id"].unique()
                      if not any(roles[i] == "meta" for i in frame.loc[frame["patient_id"] == pid, "image"]))
    assert expected, "the tiny demo should have a patient with one consensus eye"
    listed = next(df.value for df in at.dataframe if "held back by" in df.value.columns)
    assert sorted(listed["patient_id"]) == expected

    pid = expected[0]
    at.multiselect(key="meta_held_pick").set_value([pid]).run()
    at.button(key="meta_held_add").click().run()
    assert not at.exception, at.exception
    roles = at.session_state["meta_roles"]["roles"]
    mine = frame[frame["patient_id"] == pid]
    assert all(roles[i] == ("meta" if c else "unlabeled") for i, c in zip(mine["image"], mine["consensus"], strict=True))
    at.button(key="meta_save").click().run()
    assert not at.error, [e.value for e in at.error]
    saved = read_roles(next((workspace / "roles").glob("*.csv")), table)  # what `run --roles` accepts
    assert list(saved[frame["patient_id"] == pid]) == [roles[i] for i in mine["image"]]


def test_the_proposal_note_goes_once_the_sets_are_edited(at, demo):
    _propose(at)
    assert any("fewer than the target" in i.value for i in at.info)
    at.checkbox[0].uncheck().run()
    assert not at.exception, at.exception
    assert not any("fewer than the target" in i.value for i in at.info)
