"""Shared test settings: deterministic, single-threaded torch for reproducible CPU numbers."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
