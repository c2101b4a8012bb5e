"""Registry of label-noise methods, like timm's model registry.

A method is one module in this package that defines a `Method` subclass decorated with `@register`.
Adding a method = one new file + its name in `_MODULES`. `list_methods()` feeds argparse choices, the app's
select box and the tests' parametrisation.
"""

from __future__ import annotations

import importlib

from engine.methods.base import Method, register, registry

_MODULES = ("ce", "meta_finetune", "mslg", "metalabelnet", "mlc", "o2u", "apl", "o2u_apl")


def _load() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"engine.methods.{mod}")
        except ModuleNotFoundError as exc:  # a method module not written yet must not break the others
            if exc.name != f"engine.methods.{mod}":
                raise


def list_methods() -> list[str]:
    _load()
    return list(registry)


def get_method(name: str) -> type[Method]:
    _load()
    from engine.errors import InputError, Problem

    try:
        return registry[name]
    except KeyError:
        raise InputError(Problem("--method", f"unknown method '{name}'", f"choose one of {', '.join(registry)}")) from None


__all__ = ["Method", "register", "list_methods", "get_method"]
