"""A class-data-sharing (CDS) archive of the classes a local Spark + Delta session loads.

Every local entry point (``personas run``, ``personas sql``, a notebook kernel, a pytest
worker) starts a JVM that loads and verifies about 20,000 classes from Spark's and Delta's JARs
before its first query answers: about 10 s of a ``personas sql`` that takes 30 s. A dynamic
CDS archive (JDK 13+) holds those classes already parsed and verified; a JVM that maps it starts
its session in half the time (docs/scaling.md "JVM start-up").

``scripts/setup.sh`` builds the archive once (``python -m persona_lib.class_archive``) by running
a small Delta workload in a JVM started with ``-XX:ArchiveClassesAtExit``; the session factory
passes ``-XX:SharedArchiveFile`` whenever the file exists. The JVM itself checks that the
archive matches its own binary and class path and silently ignores one that does not (a new JDK,
another pyspark), so a stale archive costs the start-up time it saved and nothing else; the key
file beside it lets set-up rebuild it only when the JDK, pyspark or the JARs change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from persona_lib.config import AppConfig, load_config
from persona_lib.spark import USE_ARCHIVE_FLAGS as USE_FLAGS
from persona_lib.spark import archive_path, build_local_spark, use_flags  # noqa: F401 - the archive's API


def archive_key(config: AppConfig) -> str:
    """What the archive depends on: the JDK, pyspark's JARs and ours."""
    import pyspark

    from persona_lib.jars import list_jars

    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True).stderr
    pyspark_jars = sorted(Path(pyspark.__file__).parent.joinpath("jars").glob("*.jar"))
    jars = [*pyspark_jars, *list_jars(config.resolve_path(config.spark.jars_dir))]
    parts = {"java": java, "jars": [(j.name, j.stat().st_size) for j in jars]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _key_file(path: Path) -> Path:
    return path.with_name(path.name + ".key")


def is_current(config: AppConfig) -> bool:
    path = archive_path(config)
    if path is None or not path.is_file() or not _key_file(path).is_file():
        return False
    return _key_file(path).read_text().strip() == archive_key(config)


def _workload(spark, folder: Path) -> None:
    """What a pipeline run touches first: Delta writes, a merge, time travel, history, SQL over
    a registered table and a view, shuffles, Arrow batches to Python and back, checkpoints."""
    import pandas as pd
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    table = str(folder / "events")
    events = spark.range(2000).select(
        F.col("id").cast("string").alias("customer_id"), (F.col("id") % 37).cast("string").alias("product_id"),
        (F.col("id") % 5 + 1).cast("double").alias("quantity"), F.current_timestamp().alias("at"))
    events.write.format("delta").mode("overwrite").save(table)
    events.limit(100).write.format("delta").mode("append").save(table)
    updates = events.limit(50).withColumn("quantity", F.lit(9.0))
    (DeltaTable.forPath(spark, table).alias("t")
     .merge(updates.alias("u"), "t.customer_id = u.customer_id AND t.product_id = u.product_id")
     .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    DeltaTable.forPath(spark, table).history(1).select("version").head()
    spark.read.format("delta").option("versionAsOf", 0).load(table).count()
    spark.sql("CREATE SCHEMA IF NOT EXISTS class_archive")
    spark.sql(f"CREATE TABLE class_archive.events USING delta LOCATION '{table}'")
    spark.sql("CREATE OR REPLACE VIEW class_archive.current_events AS SELECT * FROM class_archive.events VERSION AS OF 1")
    spark.sql("SELECT product_id, count(*) AS n, approx_count_distinct(customer_id) FROM class_archive.current_events "
              "GROUP BY product_id ORDER BY n DESC").collect()
    frame = spark.read.format("delta").load(table)
    ranked = frame.withColumn("rank", F.row_number().over(Window.partitionBy("product_id").orderBy(F.desc("quantity"))))
    joined = ranked.join(frame.groupBy("customer_id").agg(F.sum("quantity").alias("spend")), "customer_id")
    joined.localCheckpoint().count()
    joined.checkpoint().count()
    scaled = frame.mapInArrow(lambda batches: (b for b in batches), frame.schema)
    scaled.groupBy("product_id").applyInPandas(
        lambda pdf: pd.DataFrame({"product_id": pdf["product_id"].iloc[:1], "n": [len(pdf)]}),
        "product_id string, n long").toPandas()
    spark.sql(f"DESCRIBE DETAIL delta.`{table}`").collect()
    spark.sql(f"VACUUM delta.`{table}` RETAIN 168 HOURS").collect()


def build(config: AppConfig) -> Path:
    """Run the workload in a JVM that writes the archive when it exits, then move it in place."""
    path = archive_path(config)
    if path is None:
        raise ValueError("spark.class_archive is not set: there is nowhere to write the archive")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside its final place, so the move in is a rename on one file system.
    written = path.with_name(path.name + ".tmp")
    written.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="class-archive-") as scratch:
        folder = Path(scratch)
        session_config = dataclasses.replace(config.replace("spark", class_archive=None),
                                             workdir=str(folder / "work"))
        spark = build_local_spark(
            session_config,
            extra_java_options=f"-XX:ArchiveClassesAtExit={written} {USE_FLAGS}")
        gateway = spark.sparkContext._gateway
        _workload(spark, folder)
        spark.stop()
        # The JVM writes the archive as it exits, which it does when its stdin closes.
        gateway.shutdown()
        gateway.proc.stdin.close()
        gateway.proc.wait(timeout=300)
        if not written.is_file():
            raise RuntimeError(f"the JVM exited without writing {written}")
        os.replace(written, path)
    _key_file(path).write_text(archive_key(config) + "\n")
    return path


def main(argv: list[str]) -> int:
    conf = argv[0] if argv else str(Path(__file__).resolve().parent.parent / "conf" / "test.yaml")
    config = load_config(conf)
    if is_current(config):
        print(f"class archive: {archive_path(config)} is up to date", file=sys.stderr)
        return 0
    path = build(config)
    print(f"class archive: {path} ({path.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
