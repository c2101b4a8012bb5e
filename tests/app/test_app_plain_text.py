"""Text from votes.csv and the store is shown as plain text: Markdown in a class, expert, image or reviewer name
(`![x](http://host/x.png)`) must never make the browser fetch a URL or show a link.

AppTest gives the Markdown source each element sends to the browser; every element that renders Markdown is
checked for link/image syntax, and the names must still be there (escaped), so the check is not vacuous.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from PIL import Image

from tests.app.texts import unescape

HOST = "http://127.0.0.1:9"
EVIL_CLASS = f"![c]({HOST}/class.png)"
EVIL_EXPERT = f"![e]({HOST}/expert.png)"
EVIL_IMAGE = "![i](img.png).png"  # a file name may hold it too (a relative URL: the app's own server)
EVIL_REVIEWER = f"[click me]({HOST}/reviewer)"
CLASSES = ["normal", EVIL_CLASS]


def _unescaped_link(text: str) -> bool:
    """Markdown link or image syntax that is not backslash-escaped: ']' directly followed by '('."""
    return re.search(r"(?<!\\)\]\(", text) is not None


def _markdown_texts(at) -> list[str]:
    """The Markdown source of every element that renders Markdown, labels included."""
    texts = []
    for kind in ("markdown", "caption", "title", "header", "subheader", "error", "warning", "info", "success",
                 "toast"):
        texts += [e.value for e in getattr(at, kind)]
    for kind in ("button", "checkbox", "expander", "tabs", "metric", "toggle", "radio"):
        texts += [e.label for e in getattr(at, kind)]
        texts += [str(e.help) for e in getattr(at, kind) if getattr(e, "help", None)]
    return [t for t in texts if t]


@pytest.fixture
def evil(workspace, monkeypatch):
    """A dataset and a finished run whose names are Markdown, opened and selected in the app."""
    ds = workspace / "datasets" / "evil"
    ds.mkdir(parents=True)
    rows = [("a.png", "normal", "normal"), (EVIL_IMAGE, EVIL_CLASS, EVIL_CLASS), ("c.png", "normal", "normal"),
            ("d.png", EVIL_CLASS, EVIL_CLASS), ("e.png", "normal", EVIL_CLASS), ("f.png", EVIL_CLASS, "normal")]
    for i, (name, *_votes) in enumerate(rows):
        Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(ds / name)
    votes = pd.DataFrame(rows, columns=["image", "dr_a", EVIL_EXPERT])
    votes.to_csv(ds / "votes.csv", index=False)
    run = workspace / "runs" / "20250101-000000-ce"
    run.mkdir(parents=True)
    labels = pd.DataFrame({
        "image": [r[0] for r in rows], "role": ["meta", "meta", "test", "test", "train", "train"],
        "votes": [f"dr_a={a};{EVIL_EXPERT}={b}" for _, a, b in rows],
        "majority": ["normal", EVIL_CLASS, "normal", EVIL_CLASS, EVIL_CLASS, EVIL_CLASS],
        "consensus": [1, 1, 1, 1, 0, 0], "p:normal": [0.9, 0.1, 0.8, 0.2, 0.7, 0.6],
        f"p:{EVIL_CLASS}": [0.1, 0.9, 0.2, 0.8, 0.3, 0.4],
        "suggested": ["normal", EVIL_CLASS, "normal", EVIL_CLASS, "normal", "normal"],
        "confidence": [0.9, 0.9, 0.8, 0.8, 0.7, 0.6], "flag": [0, 0, 0, 0, 1, 1],
        "flag_reason": ["", "", "", "", f"model suggests {EVIL_CLASS}", "tie"],
        "flag_score": [0.1, 0.1, 0.2, 0.2, 0.9, 0.8]})
    labels.to_csv(run / "labels.csv", index=False)
    (run / "config.json").write_text(json.dumps({"data": {"dataset": str(ds)}, "runtime": {"method": "ce"},
                                                 "classes": CLASSES}))
    (run / "status.json").write_text(json.dumps({"state": "done", "stage": "done", "epoch": 2, "of": 2}))
    (run / "metrics.json").write_text(json.dumps({"method": "ce", "classes": CLASSES, "meta_acc": 1.0,
                                                  "test_acc": 1.0, "n_flagged": 2, "history": []}))
    from engine.store import WorkspaceStore

    with WorkspaceStore(workspace / "review.db") as store:
        store.register_run(run, dataset=ds, method="ce", state="done")
        store.add_decision(run, "e.png", reviewer=EVIL_REVIEWER, new_label=EVIL_CLASS, old_label="normal",
                           action="choose_class", note=f"see ![n]({HOST}/note.png)")
    monkeypatch.setenv("ROP_DATASET", str(ds))
    monkeypatch.setenv("ROP_RUN", str(run))
    return ds, run


def _check(at, *must_show: str) -> None:
    assert not at.exception, at.exception
    texts = _markdown_texts(at)
    bad = [t for t in texts if _unescaped_link(t)]
    assert not bad, bad
    shown = " ".join(unescape(t) for t in texts)  # the text as the reader sees it
    for name in must_show:
        assert name in shown, (name, texts)


def test_data_meta_and_review_pages_show_names_as_text(at, evil):
    at.run()
    at.switch_page("views/data.py").run()
    _check(at, EVIL_CLASS, EVIL_EXPERT, EVIL_IMAGE)
    at.switch_page("views/meta.py").run()
    _check(at)
    at.switch_page("views/review.py").run()
    at.text_input(key="rv_name_input").set_value(EVIL_REVIEWER)
    next(b for b in at.form_submit_button if b.label == "Start reviewing").click().run()
    _check(at, EVIL_REVIEWER, EVIL_CLASS, "f.png")  # "Reviewing as <reviewer>", the majority, class buttons
    at.button(key="rv_class_1").click().run()  # a decision: the toast names the class chosen
    _check(at, f"you chose {EVIL_CLASS} for f.png")


def test_md_and_code_escape_everything_markdown_reads():
    from app.plain import code, md

    assert md("dr_a") == "dr\\_a" and md("Dr Test") == "Dr Test"
    assert md("![x](http://h/x.png)") == "\\!\\[x\\]\\(http\\:\\/\\/h\\/x\\.png\\)"
    assert md(":red[x] $x$ <b>&amp;") == "\\:red\\[x\\] \\$x\\$ \\<b\\>\\&amp\\;"
    assert md("line\n# heading") == "line \\# heading"
    assert code("a`b") == "`` a`b ``" and code("/data/x") == "` /data/x `"
