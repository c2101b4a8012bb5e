"""Errors as messages, never tracebacks: bad input as a table of problems, anything else logged to app.log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import streamlit as st

from app import state
from app.plain import code, md


def problems_frame(err) -> pd.DataFrame:
    """An InputError's problems as rows (file, row, problem, fix); `row` is text: '14', '2–10001', '' for none."""
    rows = [p.as_dict() for p in getattr(err, "problems", [])]
    frame = pd.DataFrame(rows, columns=["file", "rows", "problem", "fix"])
    return frame.rename(columns={"rows": "row"})


def show_problems(err, *, title: str) -> None:
    """One error box naming how many problems, then a readable table of all of them."""
    n = len(getattr(err, "problems", []))
    st.error(f"**{title}**: {n} problem{'s' if n != 1 else ''} found. Fix them all, then try again.", icon=":material/warning:")
    st.dataframe(problems_frame(err), hide_index=True, width="stretch",
                 column_config={"fix": st.column_config.TextColumn("how to fix", width="large"),
                                "problem": st.column_config.TextColumn(width="large")})


@contextmanager
def guard(action: str) -> Iterator[None]:
    """Run `action` (e.g. "open the dataset"); show bad input as a problem table, log anything else.

    Streamlit's own control flow (st.rerun, st.stop) derives from BaseException and passes through.
    """
    from engine.errors import InputError

    try:
        yield
    except InputError as err:
        state.log.warning("cannot %s: %s", action, err)
        show_problems(err, title=f"Cannot {action}")
    except Exception as exc:  # shown as a message; the traceback goes to the log file only
        state.log.exception("failed to %s", action)
        st.error(
            f"Could not {action}: {type(exc).__name__}: {md(exc)}\n\n"
            f"The details are in {code(state.workspace() / 'app.log')}.",
            icon=":material/error:",
        )
