"""One error type for bad user input: every problem at once, each naming file, row, what is wrong, how to fix."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input. `row` is the 1-based data row of a CSV (header excluded), or None."""

    file: str
    problem: str
    fix: str = ""
    row: int | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        text = f"{where}: {self.problem}"
        return f"{text} (fix: {self.fix})" if self.fix else text

    def as_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "problem": self.problem, "fix": self.fix}


class InputError(Exception):
    """Raised when user input is unusable. Carries all problems found, so the user fixes them in one go."""

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(file="", problem=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Warning_:
    """A non-fatal remark about the input (shown, never blocking)."""

    file: str
    message: str
    row: int | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}: {self.message}"
