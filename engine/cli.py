"""`python -m engine COMMAND`: one module per command in `engine/commands/`, each with `add_parser` and `run`.

Bad input (`InputError`) is printed as one block listing every problem, exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from engine.errors import EXIT_BAD_INPUT, InputError

# command name -> module in engine/commands (adding a command = one module + one line here)
COMMANDS = {
    "demo-data": "demo_data",
    "inspect": "inspect",
    "split": "split",
    "run": "run",
    "predict": "predict",
    "export": "export",
    "metrics": "metrics",
    "methods": "methods",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that command's module is imported (the others may pull in torch)."""
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Train image classifiers on noisily labelled medical images (ROP) and flag images to review.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            continue
        mod = importlib.import_module(f"engine.commands.{module}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


PROBLEMS_SHOWN = 50  # a longer list only buries the first problems; the total is always printed


def print_problems(err: InputError, stream=None) -> None:
    stream = stream or sys.stderr
    n = len(err.problems)
    print(f"error: {n} problem{'s' if n != 1 else ''} in the input; nothing was written.", file=stream)
    for p in err.problems[:PROBLEMS_SHOWN]:
        print(f"  - {p}", file=stream)
    if n > PROBLEMS_SHOWN:
        print(f"  ... and {n - PROBLEMS_SHOWN} more problems ({n} in all): fix the ones above and run again",
              file=stream)


def main(argv: list[str] | None = None) -> int:
    # torch's forward-mode AD (engine/meta.py) loads its decompositions through torch.jit.script, which warns about
    # its own deprecation in every run: noise on the console that the user can do nothing about
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(first if first in COMMANDS else None).parse_args(argv)
    args._argv = argv  # `run --nproc N` hands the same arguments to torchrun
    try:
        return int(args._run(args) or 0)
    except InputError as err:
        if _first_process():  # the other processes of a distributed run hold the same problems: printed once
            print_problems(err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _first_process() -> bool:
    """False in the processes of a torchrun job other than process 0 (RANK is torchrun's)."""
    import os

    return os.environ.get("RANK", "0") in ("", "0")
