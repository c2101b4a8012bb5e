"""One error type for bad user input: every problem at once, each naming file, row, what is wrong, how to fix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EXIT_BAD_INPUT = 2
ROWS_SHOWN = 8  # rows named in one message before "and N more"


def rows_span(rows: Sequence[int], limit: int = ROWS_SHOWN) -> str:
    """Row numbers for messages, runs of 3+ consecutive rows as ranges: '3', '2–10001', '3, 5, 9–12 and 40 more'."""
    rows = sorted(set(rows))
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and r == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], r)
        else:
            runs.append((r, r))
    parts: list[tuple[str, int]] = []  # (text, rows it covers)
    for lo, hi in runs:
        parts += [(str(lo), 1), (str(hi), 1)] if hi == lo + 1 else [(str(lo) if lo == hi else f"{lo}–{hi}", hi - lo + 1)]
    shown = ", ".join(text for text, _ in parts[:limit])
    left = sum(n for _, n in parts[limit:])
    return shown + (f" and {left} more" if left else "")


def rows_text(rows: Sequence[int], limit: int = ROWS_SHOWN) -> str:
    """'row 3' / 'rows 3, 5, 9–12 and 40 more' for messages."""
    return f"row{'s' if len(set(rows)) > 1 else ''} {rows_span(rows, limit)}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input. `row` is the 1-based data row of a CSV (header excluded), or None;
    `rows` lists every row when one problem stands for the same fault in several rows (see `group_problems`)."""

    file: str
    problem: str
    fix: str = ""
    row: int | None = None
    rows: tuple[int, ...] = ()

    @property
    def where(self) -> str:
        if len(self.rows) > 1:
            return f"{self.file} {rows_text(self.rows)}"
        return self.file if self.row is None else f"{self.file} row {self.row}"

    def __str__(self) -> str:
        text = f"{self.where}: {self.problem}"
        return f"{text} (fix: {self.fix})" if self.fix else text

    def as_dict(self) -> dict:
        """`row`: the first row (int or None); `rows`: all its rows as text ('2–10001'), '' when none."""
        rows = self.rows or (() if self.row is None else (self.row,))
        return {"file": self.file, "row": self.row, "rows": rows_span(rows) if rows else "", "problem": self.problem,
                "fix": self.fix}


def group_problems(problems: Sequence[Problem]) -> list[Problem]:
    """Merge problems that differ only in their row (10,000 rows naming one missing file -> one problem listing
    its rows), in order of first appearance."""
    groups: dict[tuple, list[Problem]] = {}
    for p in problems:
        key = (p.file, p.problem, p.fix) if p.row is not None else (id(p),)
        groups.setdefault(key, []).append(p)
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(members[0])
            continue
        rows = tuple(sorted({r for m in members for r in (m.rows or (m.row,))}))
        first = members[0]
        out.append(Problem(first.file, first.problem, first.fix, row=rows[0], rows=rows))
    return out


class InputError(Exception):
    """Raised when user input is unusable. Carries all problems found, so the user fixes them in one go; the same
    fault in many rows is one problem naming its rows (`group_problems`)."""

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(file="", problem=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = group_problems(list(problems))
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self):  # pickled whole (e.g. sent from process 0 to the others of a distributed run)
        return (type(self), (self.problems,))


@dataclass(frozen=True)
class Warning_:
    """A non-fatal remark about the input (shown, never blocking)."""

    file: str
    message: str
    row: int | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}: {self.message}"
