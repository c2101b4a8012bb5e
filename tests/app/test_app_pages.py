"""Every page renders on the demo dataset without an exception, and says what to do when it cannot work yet."""

from __future__ import annotations

import pytest

from tests.app.texts import unescape

PAGES = ["views/overview.py", "views/data.py", "views/meta.py", "views/train.py", "views/review.py",
         "views/export.py", "views/predict.py"]


def _texts(at) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "success", "error", "title", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(unescape(str(p)) for p in parts)


@pytest.mark.parametrize("page", PAGES)
def test_page_without_dataset_shows_next_step(at, page):
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    if page not in ("views/overview.py", "views/data.py"):
        assert "first" in _texts(at)  # "Open a dataset on the Data page first" / "train one ... first"


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_demo_with_a_run(at, fake_run, page):
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_data_page_summarises_the_demo(at, demo):
    at.run()
    at.switch_page("views/data.py").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "24"
    assert metrics["Graders"] == "3"
    assert "SYNTHETIC" in _texts(at)
    assert "normal → pre-plus → plus" in _texts(at)  # the ROP class order, not the alphabetical one
    assert len(at.image) > 0  # thumbnails


def test_demo_button_opens_the_demo(at, demo, monkeypatch):
    monkeypatch.delenv("ROP_DATASET")
    at.run()
    at.switch_page("views/data.py").run()
    assert "Open a dataset to start" in _texts(at)
    at.button(key="data_open_demo").click().run()
    assert not at.exception, at.exception
    assert at.session_state["dataset"] == str(demo.resolve())
    assert {m.label: m.value for m in at.metric}["Images"] == "24"


def test_data_page_filters(at, demo):
    at.run()
    at.switch_page("views/data.py").run()
    n_all = len(at.image)
    at.selectbox(key="data_browse_agreement").set_value("unanimous (consensus)").run()
    assert not at.exception
    assert 0 < len(at.image) < n_all


def test_bad_folder_shows_problem_table(at, workspace, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "votes.csv").write_text("image,dr_a\nmissing.png,plus\n../escape.png,normal\n")
    at.run()
    at.switch_page("views/data.py").run()
    at.text_input(key="data_open_path").set_value(str(bad))
    next(b for b in at.form_submit_button if b.label == "Open folder").click().run()
    assert not at.exception, at.exception
    assert at.error and "problem" in at.error[0].value
    problems = at.dataframe[0].value
    assert list(problems.columns) == ["file", "row", "problem", "fix"]
    assert len(problems) >= 2


def test_a_new_session_comes_back_to_the_last_dataset_and_run(at, fake_run, monkeypatch):
    """A browser refresh (a new session, no command-line options) finds the dataset and the finished run again."""
    at.run()
    at.switch_page("views/data.py").run()  # the command line opened the demo: it is recorded in the store
    monkeypatch.delenv("ROP_DATASET")
    monkeypatch.delenv("ROP_RUN")
    from streamlit.testing.v1 import AppTest

    fresh = AppTest.from_file(at._script_path, default_timeout=30).run()
    assert not fresh.exception, fresh.exception
    assert fresh.session_state["dataset"] == at.session_state["dataset"]
    assert fresh.session_state["run"] == str(fake_run.resolve())


def _card(at, title: str) -> tuple[bool, list[str]]:
    """(ticked, the page's captions) for an Overview step card."""
    marks = [m.value for m in at.markdown if f"· {title}**" in m.value]
    assert len(marks) == 1, [m.value for m in at.markdown]
    return "check_circle" in marks[0], [c.value for c in at.caption]


def test_overview_ticks_the_meta_set_of_a_run_that_used_a_proposed_split(at, fake_run):
    import pandas as pd

    labels = pd.read_csv(fake_run / "labels.csv", keep_default_na=False)
    labels[["image", "role"]].to_csv(fake_run / "roles.csv", index=False)  # what every engine run writes
    at.run()
    ticked, texts = _card(at, "Meta set")
    n_meta = int((labels["role"] == "meta").sum())
    assert ticked
    assert any(f"proposed split: {n_meta} meta" in t for t in texts)


def test_overview_ticks_review_only_when_every_flagged_image_is_reviewed(at, fake_run, workspace):
    import pandas as pd

    from engine.store import WorkspaceStore

    labels = pd.read_csv(fake_run / "labels.csv", keep_default_na=False)
    flagged = list(labels.loc[labels["flag"] == 1, "image"])
    assert len(flagged) >= 2
    with WorkspaceStore(workspace / "review.db") as store:
        store.add_decision(fake_run, flagged[0], reviewer="Dr T", new_label="plus", old_label=None,
                           action="choose_class")
    at.run()
    ticked, texts = _card(at, "Review")
    assert not ticked
    assert any(f"1 of {len(flagged)} flagged images reviewed" in t for t in texts)
    with WorkspaceStore(workspace / "review.db") as store:
        for image in flagged[1:]:
            store.add_decision(fake_run, image, reviewer="Dr T", new_label="plus", old_label=None,
                               action="choose_class")
    at.run()
    assert _card(at, "Review")[0]


def test_the_sidebar_shows_the_run_the_review_page_works_on(at, fake_run, demo, workspace, monkeypatch):
    """The session's run is one without labels.csv (e.g. just launched): the Review page falls back to the finished
    run, and the sidebar says so in the same run of the script."""
    from engine.store import WorkspaceStore

    unfinished = workspace / "runs" / "20250103-000000-ce"
    unfinished.mkdir(parents=True)
    with WorkspaceStore(workspace / "review.db") as store:
        store.register_run(unfinished, dataset=demo, method="ce", state="failed", pid=None)
    monkeypatch.setenv("ROP_RUN", str(unfinished))
    at.run()
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    assert at.session_state["run"] == str(fake_run)
    sidebar_texts = [t.value for t in at.sidebar.text]
    assert any(t.startswith(fake_run.name) for t in sidebar_texts), sidebar_texts


def test_class_balance_chart_sizes_itself_per_bar(at, demo):
    """A fixed total height made Streamlit's theme squeeze the grouped bars and the bottom legend into it: the chart
    collapsed into a thin strip. The height is a step per bar, so the chart grows with the classes."""
    import json

    at.run()
    at.switch_page("views/data.py").run()
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    grouped = [s for s in specs if "yOffset" in s.get("encoding", {})]
    assert len(grouped) == 1  # the class balance: majority vote vs consensus only
    assert grouped[0]["height"] == {"step": 16}
