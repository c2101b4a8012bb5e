"""Text from votes.csv, the store or the file system, made literal inside Streamlit's Markdown.

Streamlit renders Markdown in st.markdown, captions, alerts, toasts, button/checkbox/tab/expander/metric labels
and help texts. A class, expert or reviewer name like `![x](http://host/t.png)` would make every browser that
shows it fetch a remote URL (and `[click](http://...)` would be a link): user text is escaped with `md` (or put in
a code span with `code`) wherever it goes into Markdown. Tables (st.dataframe) and select boxes show plain text.
"""

from __future__ import annotations

import re

# CommonMark lets a backslash escape any ASCII punctuation character; escaping all of them also covers
# Streamlit's own syntax (:color[...], :material/icon:, $LaTeX$) and GFM autolinks (http\://...).
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def md(text: object) -> str:
    """`text` shown literally in Markdown: punctuation escaped, line breaks turned into spaces."""
    return _PUNCTUATION.sub(r"\\\1", " ".join(str(text).splitlines()))


def code(text: object) -> str:
    """`text` as an inline code span (for paths), whatever backticks it contains."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"
