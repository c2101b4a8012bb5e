"""Shared test settings: deterministic, single-threaded torch for reproducible CPU numbers."""

import os
import sys

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


_MAIN_MODULE = sys.modules.get("__main__")


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest runs a page as `__main__` and leaves it in sys.modules; a later test that starts processes
    with the `spawn` method (torch.multiprocessing) would then run that page again in every child (seen in CI as
    'database is locked' in a child). Put pytest's own `__main__` back after every test."""
    yield
    if _MAIN_MODULE is not None and sys.modules.get("__main__") is not _MAIN_MODULE:
        sys.modules["__main__"] = _MAIN_MODULE
