"""One local SparkSession (Delta, checkpoints, fast JVM flags) per pytest process: the whole
run, or each of the two workers of the README's ``pytest -n 2``.

Each test gets its own work directory (``config`` fixture), so Delta tables of different
tests never collide while they share the session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from persona_lib.config import AppConfig, load_config
from persona_lib.spark import build_local_spark
from persona_lib.testing import TEST_CONF  # also what tests may import from here

# endpoint_factory: a loopback OpenAI-compatible chat endpoint (test_labelling_openai, test_taxonomy_propose).
pytest_plugins = ["tests.openai_endpoint"]


@pytest.fixture(scope="session")
def session_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spark-session")


@pytest.fixture(scope="session")
def spark(session_workdir, request):
    session = build_local_spark(load_config(TEST_CONF, workdir=str(session_workdir)))
    yield session
    request.config.stash[CODE_CACHE] = code_cache_use(session)
    session.stop()


CODE_CACHE = pytest.StashKey[str]()


def code_cache_use(session) -> str:
    # The one JVM lives for the whole run: its JIT code cache must not fill (persona_lib.spark).
    jvm = session.sparkContext._jvm
    pools = [pool for pool in jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans()
             if "code" in pool.getName().lower()]
    used = sum(pool.getUsage().getUsed() for pool in pools)
    reserved = sum(max(pool.getUsage().getMax(), 0) for pool in pools)
    return f"JVM code cache: {used / 2**20:.0f} MiB used of {reserved / 2**20:.0f} MiB"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist turns the group into the test's scope
def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n 2 --dist loadgroup`` (the README's test command) a module's tests run
    on one worker, so its module fixtures (most build a whole published run) are built once;
    the modules reading the session's shared published run (``published_site``) run together."""
    for item in items:
        shared = "published_site" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.xdist_group("published_site" if shared else item.module.__name__))


def pytest_terminal_summary(terminalreporter, config):
    if CODE_CACHE in config.stash:
        terminalreporter.write_line(config.stash[CODE_CACHE])


@dataclass(frozen=True)
class PublishedSite:
    """A complete run on the 8-day slice, written once per pytest run for the modules that only read it."""

    conf_path: Path
    config: AppConfig
    summary: dict
    overridden_customer: str
    override_reason: str = "override-me"
    override_personas: tuple = ("Home Decor Aficionado",)


@pytest.fixture(scope="session")
def published_site(spark, tmp_path_factory) -> PublishedSite:
    """Ingest, one override, then `run_pipeline` (2 rounds, 30% budget): the shared published run.

    Read-only by contract: a test that forgets, overrides or republishes builds its own site, so
    that the modules sharing this one see the same tables whatever order they run in.
    """
    from persona_lib import storage
    from persona_lib.ingest import ingest
    from persona_lib.labelling import add_overrides
    from persona_lib.pipeline import run_pipeline
    from tests.landing_files import copy_landing_slice

    root = tmp_path_factory.mktemp("published-site")
    landing = copy_landing_slice(root / "landing")
    conf = root / "published.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "ingest": {"landing": str(landing)},
                                    "sampling": {"budget": 0.3, "rounds": 2}}))
    config = load_config(conf, workdir=str(root / "work"))
    ingest(spark, config)
    overridden = (storage.resolve_tables(config).purchase_events.read(spark)
                  .select("customer_id").distinct().orderBy("customer_id").first()["customer_id"])
    add_overrides(spark, config, [{"customer_id": overridden, "personas": list(PublishedSite.override_personas),
                                   "author": "tests", "reason": PublishedSite.override_reason}])
    return PublishedSite(conf, config, run_pipeline(spark, config), overridden)


@pytest.fixture
def config(tmp_path) -> AppConfig:
    """The test config with a fresh work directory for this test."""
    return load_config(TEST_CONF, workdir=str(tmp_path / "work"))


@pytest.fixture
def tables(config):
    """Where the test config's tables live (``storage.Tables``), resolved once as entry points do."""
    from persona_lib.storage import resolve_tables

    return resolve_tables(config)
