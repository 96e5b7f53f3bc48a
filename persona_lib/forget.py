"""Deletion of customers: every trace, in one job (README "Deletion" and "Guarantees").

1. Their ids are recorded in the tombstones table as keyed hashes, HMAC-SHA256 with a secret
   key read from the environment variable named by ``forget.tombstone_key_env`` (a missing
   key stops the job with exit code 3). Without the key a tombstone cannot be tested against
   a guessed id, so the tombstone is not itself a trace. Ingestion and every labeller skip
   tombstoned customers, so re-ingesting the landing files or replaying recorded answers
   cannot bring them back.
2. Their rows are deleted from every table of the config that has a ``customer_id`` column
   (events, quarantine, labels, overrides, recorded answers, affinities, published tables,
   the paper and synthetic cuts, the evaluation tables). Each delete is a MERGE against a
   temporary set of the ids, so the Delta log records the join condition, never an id.
   Quarantine rows match by their CustomerID field and, when that field is not an id (a
   malformed line), by any number in the raw line.
3. The products and neighbours they influenced are recomputed: the remaining labels are
   propagated again and published as a new run (``pipeline.republish``). With
   ``recompute=False`` a new run row is still published, pointing at the outputs as they are
   after the deletion. Either way every earlier complete run is marked ``purged``: its
   versions hold the forgotten customers and VACUUM removes their files.
4. MLflow artifacts of the local store that mention an id are deleted.
5. The deleted rows are purged from storage: ``REORG TABLE ... APPLY (PURGE)`` where deletion
   vectors are on, then ``VACUUM`` with the configured retention; checkpoints are removed.
   Under the production retention (7 days) time travel to versions older than the deletion
   keeps working until VACUUM runs past the retention window; after it, no data file holds
   the customer. Tables holding ids keep no column statistics of id-bearing columns
   (``storage.id_safe_properties``), so the transaction log does not quote them either;
   log entries written before that property was set keep their statistics until log cleanup
   (delta.logRetentionDuration, 30 days by default).
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from typing import Iterable, Optional

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from persona_lib import contracts, publishing, storage, tracking
from persona_lib.config import AppConfig
from persona_lib.errors import InputError
from persona_lib.pipeline import republish
from persona_lib.publishing import abandon_stale_runs
from persona_lib.query import run_alias
from persona_lib.spark import session_conf
from persona_lib.storage import TableRef, Tables
from persona_lib.tombstones import (
    RAW_ID_TOKEN,
    RAW_ID_TOKEN_SQL,
    UNREADABLE_ID_REASONS_SQL,
    clean_customer_id,
    customer_hash,
    tombstone_key,
)

log = logging.getLogger("personas.forget")

# How SQL reads a raw CustomerID field ("17850.0") as the tables' id ("17850"); null when it
# is not an id. Through DECIMAL(38, 0): exact for any length, never through a float.
_CLEAN_SQL = ("CASE WHEN trim({c}) RLIKE '^[0-9]+([.]0+)?$' THEN "
              "CAST(CAST(regexp_extract(trim({c}), '^([0-9]+)', 1) AS DECIMAL(38, 0)) AS STRING) END")


def id_tables(spark: SparkSession, tables: Tables) -> list[TableRef]:
    """Every existing table that holds customer ids."""
    refs = []
    for _, ref in tables.items():
        if ref.exists(spark) and "customer_id" in ref.read(spark).columns:
            refs.append(ref)
    return refs


def _match_condition(columns: list[str]) -> str:
    if "raw_line" not in columns:
        return "t.customer_id = s.customer_id"
    clean = _CLEAN_SQL.format(c="t.customer_id")
    tokens = (f"transform(regexp_extract_all(coalesce(t.raw_line, ''), '{RAW_ID_TOKEN_SQL}', 1), "
              "x -> regexp_replace(x, '^0+(?=[0-9])', ''))")
    return (f"({clean} = s.customer_id) OR ({clean} IS NULL AND t.reason IN {UNREADABLE_ID_REASONS_SQL} "
            f"AND array_contains({tokens}, s.customer_id))")


def forget_customers(spark: SparkSession, config: AppConfig, raw_ids: Iterable[str],
                     recompute: bool = True) -> dict:
    ids = sorted({clean_customer_id(r) for r in raw_ids})
    if not ids:
        raise InputError("forget: give at least one --customer ID")
    key = tombstone_key(config.forget)
    tables = storage.resolve_tables(config)

    # The caller holds the writer lock (the CLI takes it), so a 'running' row is a killed job.
    abandon_stale_runs(spark, tables.runs, config)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    tombstones = tables.tombstones
    rows = spark.createDataFrame([(customer_hash(i, key), now) for i in ids], contracts.TOMBSTONES)
    storage.merge_insert_new(spark, rows, tombstones, contracts.TOMBSTONES, ["customer_hash"])

    # The ids travel as a DataFrame the MERGE joins, so the commit records only the condition.
    forgotten = spark.createDataFrame([(i,) for i in ids], "customer_id string").cache()
    removed: dict[str, int] = {}
    touched = []
    try:
        for ref in id_tables(spark, tables):
            storage.protect_ids(spark, ref)
            condition = _match_condition(ref.read(spark).columns)
            count = ref.read(spark).alias("t").join(forgotten.alias("s"), F.expr(condition), "left_semi").count()
            if count:
                (ref.delta(spark).alias("t").merge(forgotten.alias("s"), condition)
                 .whenMatchedDelete().execute())
            removed[ref.name] = count
            touched.append(ref)
    finally:
        forgotten.unpersist()

    refreshed = None
    if recompute and tables.persona_labels.exists(spark) and tables.runs.exists(spark):
        refreshed = republish(spark, config, reason="forget")["run_id"]
        touched += [tables.customer_affinity, tables.product_affinity, tables.persona_affinity,
                    tables.customer_personas, tables.product_personas]
    elif tables.runs.exists(spark):
        refreshed = publish_without_recompute(spark, config, tables)
    superseded = mark_superseded_runs(spark, tables.runs, keep=refreshed)
    artifacts = purge_mlflow_artifacts(config, ids)
    purged = purge(spark, config, {ref.location: ref for ref in touched if ref.exists(spark)}.values())
    _remove_checkpoints(config)
    return {"removed": removed, "forgotten": len(ids), "purged_tables": purged,
            "republished_run": refreshed, "recomputed": bool(recompute and refreshed),
            "runs_purged": superseded, "mlflow_artifacts_removed": artifacts}


def publish_without_recompute(spark: SparkSession, config: AppConfig, tables: Tables) -> Optional[str]:
    """A complete run pointing at the output tables as they are after the deletion (no
    propagation): readers move off the versions VACUUM is about to remove. ``config``: where
    MLflow records the run and keeps the cold-start model."""
    previous = publishing.latest_run(spark, tables.runs)
    if previous is None:
        return None
    started_at = datetime.now(timezone.utc).replace(tzinfo=None)
    versions = {}
    for key in previous["table_versions"]:
        ref = tables.get(key)
        if ref.exists(spark):
            versions[key] = ref.version(spark)
    with tracking.run(config, run_name="personas-forget", tags={"personas.reason": "forget",
                                                                 "personas.recomputed": "false"}) as active:
        run_id = active.info.run_id
        tracking.set_tags({f"output.{k}.version": v for k, v in versions.items()})
        _alias_previous_cold_start_model(config, run_alias(previous["run_id"]), run_alias(run_id))
    publishing.record_run(spark, tables.runs, run_id, "complete", started_at,
                          datetime.now(timezone.utc).replace(tzinfo=None), versions,
                          {"reason": "forget", "recomputed": False, "based_on": previous["run_id"]})
    return run_id


def _alias_previous_cold_start_model(config: AppConfig, previous_alias: str, alias: str) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(config.tracking.registered_model, previous_alias)
    except MlflowException:
        log.warning("no cold-start model under alias %s: the new run has none either", previous_alias)
        return
    client.set_registered_model_alias(config.tracking.registered_model, alias, version.version)


def mark_superseded_runs(spark: SparkSession, runs: TableRef, keep: Optional[str]) -> int:
    """Mark every complete run of ``runs`` but ``keep`` as ``purged``: its table versions still
    hold the forgotten customers and are being vacuumed, so no reader may pin them any more."""
    if not runs.exists(spark):
        return 0
    stale = (F.col("status") == "complete") & (F.col("run_id") != F.lit(keep or ""))
    count = runs.read(spark).where(stale).count()
    if count:
        runs.delta(spark).update(condition=stale, set={"status": F.lit("purged")})
    return count


def purge_mlflow_artifacts(config: AppConfig, ids: list[str]) -> int:
    """Delete the local MLflow artifacts that mention a forgotten id; returns how many.

    The pipeline's artifacts carry no customer id by design (the why sample drops the id), so
    this finds nothing unless an artifact quoted one (an LLM answer, a hand-logged file).
    With a remote tracking server (``tracking.tracking_uri``), the artifacts are not on this
    file system; the id-free design is what holds there.
    """
    root = config.workdir_path / "mlartifacts"
    if config.tracking.tracking_uri or not root.is_dir():
        return 0
    wanted = set(ids)
    removed = 0
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        if any(m.group(1).lstrip("0") in wanted for m in RAW_ID_TOKEN.finditer(text)):
            path.unlink()
            removed += 1
    if removed:
        log.warning("deleted %d MLflow artifact file(s) that mentioned a forgotten customer", removed)
    return removed


def purge(spark: SparkSession, config: AppConfig, refs) -> list[str]:
    """Rewrite files with deleted rows away, then VACUUM them with the configured retention."""
    hours = config.forget.vacuum_retention_hours
    # Test configs purge at once (retention 0); production keeps the safety check on.
    unchecked = {"spark.databricks.delta.retentionDurationCheck.enabled": "false"} \
        if config.forget.disable_retention_check else {}
    with session_conf(spark, unchecked):
        names = []
        for ref in refs:
            properties = ref.delta(spark).detail().select("properties").first()["properties"] or {}
            if str(properties.get("delta.enableDeletionVectors", "false")).lower() == "true":
                spark.sql(f"REORG TABLE {ref.sql_name} APPLY (PURGE)")
            spark.sql(f"VACUUM {ref.sql_name} RETAIN {hours} HOURS")
            names.append(ref.name)
        return names


def _remove_checkpoints(config: AppConfig) -> None:
    folder = config.workdir_path / "checkpoints"
    if folder.is_dir():
        for child in folder.iterdir():
            shutil.rmtree(child, ignore_errors=True)
