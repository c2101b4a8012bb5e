"""Every page renders on the demo dataset without an exception, and says what to do when it cannot work yet."""

from __future__ import annotations

import pytest

from tests.app.texts import unescape

PAGES = ["views/overview.py", "views/data.py", "views/meta.py", "views/train.py", "views/review.py",
         "views/export.py"]


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
