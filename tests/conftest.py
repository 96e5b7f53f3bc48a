"""One local SparkSession (Delta, checkpoints, fast JVM flags) for the whole pytest run.

Each test gets its own work directory (``config`` fixture), so Delta tables of different
tests never collide while they share the session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_lib.config import AppConfig, load_config
from persona_lib.spark import build_local_spark
from persona_lib.testing import TEST_CONF  # also what tests may import from here


@pytest.fixture(scope="session")
def session_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spark-session")


@pytest.fixture(scope="session")
def spark(session_workdir):
    session = build_local_spark(load_config(TEST_CONF, workdir=str(session_workdir)))
    yield session
    session.stop()


@pytest.fixture
def config(tmp_path) -> AppConfig:
    """The test config with a fresh work directory for this test."""
    return load_config(TEST_CONF, workdir=str(tmp_path / "work"))
