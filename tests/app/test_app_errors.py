"""The app's problem table: one row per (grouped) problem, its rows as text."""

from app.components.errors import problems_frame
from engine.errors import InputError, Problem


def test_problem_table_lists_grouped_rows_as_ranges():
    err = InputError([Problem("votes.csv", "image file 'x.png' not found", "fix it", row=r) for r in range(2, 10_002)]
                     + [Problem("votes.csv", "no expert column"), Problem("votes.csv", "bad role", row=7)])
    frame = problems_frame(err)
    assert list(frame.columns) == ["file", "row", "problem", "fix"]
    assert frame["row"].tolist() == ["2–10001", "", "7"]
