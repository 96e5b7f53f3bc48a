"""The Spark session factory: local Delta + checkpoints, or the platform's active session.

On Databricks (``DATABRICKS_RUNTIME_VERSION`` set) or under ``spark-submit`` with a session
already active, the active session is used as is: Delta is built in there and GraphFrames is a
cluster library, so no JAR is added. Locally, a session is built with the fetched JARs as
local files, Delta's extension and catalog, a checkpoint dir under the work dir, and
small-job settings (no UI, few shuffle and Delta snapshot partitions, fast JVM flags).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pyspark.sql import DataFrame, SparkSession

from persona_lib.config import AppConfig
from persona_lib.jars import required_jars

# C1-only compilation starts Spark's JVM fastest, but its default code cache is 48 MB, which a
# long-lived session (the test suite's one JVM, a notebook, a long job) fills: the JVM then fails
# a query with "Out of space in CodeCache for method handle intrinsic". 256 MB is reserved
# address space, not resident memory.
FAST_JVM_FLAGS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m"

# The class-data archive (persona_lib.class_archive builds it): quiet when it is missing or
# refused, the JVM then starts as it would without it.
USE_ARCHIVE_FLAGS = "-Xlog:cds=off,cds+dynamic=off"


def archive_path(config: AppConfig) -> Path | None:
    location = config.spark.class_archive
    return config.resolve_path(location) if location else None


def use_flags(config: AppConfig) -> str:
    """JVM options that map the class archive, or "" when it is not configured or not built."""
    path = archive_path(config)
    if path is None or not path.is_file():
        return ""
    return f"-XX:SharedArchiveFile={path} {USE_ARCHIVE_FLAGS}"


def start_up_flags(config: AppConfig) -> str:
    """The JVM options a local session starts with for speed: spark.fast_jvm's flags and the
    class archive's. Under spark-submit the command line owns JVM options, so a submitter passes
    these itself (tests/test_spark_submit.py does)."""
    return " ".join(filter(None, [FAST_JVM_FLAGS if config.spark.fast_jvm else "", use_flags(config)]))


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(config: AppConfig) -> SparkSession:
    """The session for a job: the active one if there is one, else a new local one."""
    active = SparkSession.getActiveSession()
    if active is not None or on_databricks():
        spark = active or SparkSession.builder.getOrCreate()
        _set_checkpoint_dir(spark, config)
        return spark
    return build_local_spark(config)


def build_local_spark(config: AppConfig, extra_java_options: str = "") -> SparkSession:
    # Python workers must run the interpreter (and the venv) that runs the driver.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    workdir = config.workdir_path
    workdir.mkdir(parents=True, exist_ok=True)
    spark_conf = config.spark
    cores = os.cpu_count() or 2
    shuffle_partitions = spark_conf.shuffle_partitions or 2 * cores
    log_config = Path(__file__).with_name("log4j2.properties")
    java_opts = " ".join(filter(None, [
        start_up_flags(config),
        f"-Dderby.system.home={workdir / 'derby'} -Dlog4j2.configurationFile=file:{log_config}",
        extra_java_options]))
    submitted = launched_by_spark_submit()
    builder = SparkSession.builder
    if not submitted:
        # Under spark-submit the command line owns master, memory and JARs.
        builder = (
            builder.master(spark_conf.master)
            .config("spark.driver.memory", spark_conf.driver_memory)
            .config("spark.driver.extraJavaOptions", java_opts)
            .config("spark.executor.extraJavaOptions", java_opts)
        )
        jars = required_jars(config.resolve_path(spark_conf.jars_dir))
        builder = builder.config("spark.jars", ",".join(str(j) for j in jars))
    builder = (
        builder.appName(spark_conf.app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.default.parallelism", str(shuffle_partitions))
        # Delta rebuilds table state with this many tasks; its default of 50 dominates small jobs.
        .config("spark.databricks.delta.snapshotPartitions", str(max(2, cores)))
        # VACUUM lists a table's files with this many tasks per stage (default 10,000): 48 s
        # of task overhead for a table of a handful of files on 2 cores, 3 s at this setting.
        .config("spark.sql.sources.parallelPartitionDiscovery.parallelism", str(shuffle_partitions))
        .config("spark.sql.warehouse.dir", str(workdir / "warehouse"))
        .config("spark.ui.enabled", str(spark_conf.ui_enabled).lower())
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Delta 4.4's SQL parser drops Spark 4.1's parameter context (delta-io/delta#7640), so
        # spark.sql(q, args=...) leaves :name markers unbound in any query that reads a view;
        # substituting parameters as constants before parsing sidesteps the wrapper.
        .config("spark.sql.legacy.parameterSubstitution.constantsOnly", "true")
    )
    for key, value in spark_conf.extra_conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    _set_checkpoint_dir(spark, config)
    return spark


@contextlib.contextmanager
def session_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Runtime SQL settings for the block only; each is restored (or unset) after it, so a
    setting chosen for one stage does not leak into the next."""
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


Tables = TypeVar("Tables")


def map_arrow_batches(rows: DataFrame, tables: Tables, per_batch: Callable[[Tables, Any], Iterable[Any]],
                      schema: str) -> DataFrame:
    """``rows.mapInArrow`` with ``tables`` broadcast once to every task, each Arrow batch turned
    into zero or more batches of ``schema`` by ``per_batch(tables, batch)``; materialised.

    The result is local-checkpointed before the broadcast is destroyed: a lazy result would
    recompute its batches (on a lost executor, or a second action) against a destroyed
    broadcast. ``tables`` are numpy-sized (products x personas), never per customer.
    """
    shared = rows.sparkSession.sparkContext.broadcast(tables)

    def batches(arrow_batches):
        local_tables = shared.value
        for batch in arrow_batches:
            yield from per_batch(local_tables, batch)

    try:
        return rows.mapInArrow(batches, schema).localCheckpoint(eager=True)
    finally:
        shared.destroy()


def launched_by_spark_submit() -> bool:
    """True when spark-submit started the JVM and runs this driver through its gateway."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _set_checkpoint_dir(spark: SparkSession, config: AppConfig) -> None:
    checkpoints = config.workdir_path / "checkpoints"
    if not _is_remote(str(checkpoints)):
        Path(checkpoints).mkdir(parents=True, exist_ok=True)
    spark.sparkContext.setCheckpointDir(str(checkpoints))


def _is_remote(location: str) -> bool:
    return "://" in location or location.startswith("dbfs:")
