"""The command line: every command's --help renders (help texts pass through argparse's %-formatting)."""

from __future__ import annotations

import argparse

import pytest

from engine.cli import COMMANDS, main
from engine.config import add_dataclass_args
from engine.methods import get_method, list_methods


@pytest.mark.parametrize("name", list_methods())
def test_method_parameter_help_renders_in_argparse(name):
    """A bare '%' in a method's help text (e.g. "15–30 % cheaper") must not break `engine run --help`."""
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, get_method(name).config_cls, prefix=f"{name.replace('-', '_')}_")
    text = parser.format_help()
    for field in get_method(name).config_cls.__dataclass_fields__:
        assert f"--{name}-{field.replace('_', '-')}" in text


def test_percent_in_help_text_is_shown_literally():
    from dataclasses import dataclass

    from engine.config import _f

    @dataclass(frozen=True)
    class Cfg:
        speed: float = _f(0.5, "15–30 % cheaper per step (100%)")

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, Cfg)
    assert "15–30 % cheaper per step (100%)" in " ".join(parser.format_help().split())


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_of_every_command(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m engine")
    if command is not None:
        assert command in out.splitlines()[0]
