"""The JVM class-data archive (persona_lib.class_archive): mapped by every local session once
set-up has built it, rebuilt only when what it depends on changes."""

from __future__ import annotations

from persona_lib import class_archive
from persona_lib.config import load_config
from persona_lib.testing import TEST_CONF


def test_no_flag_is_passed_while_the_archive_is_not_built_or_not_configured(tmp_path):
    config = load_config(TEST_CONF).replace("spark", class_archive=str(tmp_path / "none.jsa"))
    assert class_archive.use_flags(config) == ""
    assert class_archive.use_flags(config.replace("spark", class_archive=None)) == ""


def test_a_built_archive_is_mapped_quietly(tmp_path):
    archive = tmp_path / "spark-classes.jsa"
    archive.write_bytes(b"not checked here: the JVM checks it and ignores a mismatch")
    flags = class_archive.use_flags(load_config(TEST_CONF).replace("spark", class_archive=str(archive)))
    assert f"-XX:SharedArchiveFile={archive}" in flags
    assert "-Xlog:cds=off" in flags, "a refused archive must not print warnings into a job's stderr"


def test_an_archive_whose_key_differs_is_rebuilt(tmp_path):
    config = load_config(TEST_CONF).replace("spark", class_archive=str(tmp_path / "spark-classes.jsa"))
    (tmp_path / "spark-classes.jsa").write_bytes(b"archive")
    (tmp_path / "spark-classes.jsa.key").write_text("a JDK or JAR set of another day\n")
    assert not class_archive.is_current(config)
    (tmp_path / "spark-classes.jsa.key").write_text(class_archive.archive_key(config) + "\n")
    assert class_archive.is_current(config)


def test_the_suite_session_maps_the_archive_set_up_built(spark):
    """scripts/setup.sh builds it (the README's test command runs set-up first)."""
    archive = class_archive.archive_path(load_config(TEST_CONF))
    assert archive.is_file() and class_archive.is_current(load_config(TEST_CONF)), \
        f"{archive} missing or stale: scripts/setup.sh builds it"
    jvm = spark.sparkContext._jvm
    arguments = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert f"-XX:SharedArchiveFile={archive}" in arguments
