"""Helpers for reading what the app shows."""

import re


def unescape(markdown: str) -> str:
    """The text a reader sees for Markdown source whose user text was escaped with app.plain.md."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)
