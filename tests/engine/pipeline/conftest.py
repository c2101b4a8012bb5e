"""Fixtures for pipeline tests: one tiny dataset per session."""

from pathlib import Path

import pytest

from tests.engine.pipeline.tinydata import make_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny") / "ds")
