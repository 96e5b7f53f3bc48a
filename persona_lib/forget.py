"""Deletion of customers: every trace, in one job.

1. Their ids are recorded in the tombstones table as SHA-256 hashes (the tombstone is not
   itself a trace); ingestion and every labeller skip tombstoned customers, so re-ingesting
   the landing files or replaying recorded answers cannot bring them back.
2. Their rows are deleted from every table keyed by customer (events, quarantine, labels,
   overrides, recorded answers, affinities, published tables, the paper and synthetic cuts).
3. The products and neighbours they influenced are recomputed: the remaining labels are
   propagated again and published as a new run (``pipeline.republish``).
4. The deleted rows are purged from storage: ``REORG TABLE ... APPLY (PURGE)`` where
   deletion vectors are on, then ``VACUUM`` with the configured retention; checkpoints are
   removed. Under the production retention (7 days) time travel to versions older than the
   deletion keeps working until VACUUM runs past the retention window; after it, no data
   file holds the customer. Delta's transaction log keeps column statistics (min/max) of
   removed files until log cleanup (delta.logRetentionDuration, 30 days by default).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from datetime import datetime, timezone
from typing import Iterable

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from persona_lib import contracts, storage
from persona_lib.config import AppConfig
from persona_lib.errors import InputError

log = logging.getLogger("personas.forget")

# Tables whose customer_id column holds the clean id ("17850").
CLEAN_ID_TABLES = (
    "purchase_events", "paper_purchase_events", "synth_purchase_events", "synth_truth",
    "persona_labels", "persona_overrides", "recorded_answers", "customer_affinity",
    "persona_affinity", "customer_personas",
)
# Tables holding the raw CustomerID text of the landing line ("17850.0").
RAW_ID_TABLES = ("quarantine", "paper_quarantine")


def clean_customer_id(raw: str) -> str:
    """"17850.0" -> "17850": the id as the tables hold it."""
    text = str(raw).strip()
    try:
        number = float(text)
    except ValueError as exc:
        raise InputError(f"forget: {raw!r} is not a customer id (expected an integer like 17850)") from exc
    if not number.is_integer() or number < 0:
        raise InputError(f"forget: {raw!r} is not a customer id (expected an integer like 17850)")
    return str(int(number))


def customer_hash(customer_id: str) -> str:
    return hashlib.sha256(customer_id.encode("utf-8")).hexdigest()


def _raw_id_matches(column: str, ids: list[str]) -> Column:
    as_number = F.expr(f"try_cast(trim({column}) AS DECIMAL(20, 4))")
    return as_number.isNotNull() & as_number.cast("bigint").cast("string").isin(*ids) \
        & (as_number == F.floor(as_number))


def forget_customers(spark: SparkSession, config: AppConfig, raw_ids: Iterable[str],
                     recompute: bool = True) -> dict:
    ids = sorted({clean_customer_id(r) for r in raw_ids})
    if not ids:
        raise InputError("forget: give at least one --customer ID")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    tombstones = storage.table_ref(config, "tombstones")
    rows = spark.createDataFrame([(customer_hash(i), now) for i in ids], contracts.TOMBSTONES)
    storage.merge_insert_new(spark, rows, tombstones, contracts.TOMBSTONES, ["customer_hash"])

    removed: dict[str, int] = {}
    touched = []
    for key in CLEAN_ID_TABLES + RAW_ID_TABLES:
        ref = storage.table_ref(config, key)
        if not ref.exists(spark):
            continue
        condition = _raw_id_matches("customer_id", ids) if key in RAW_ID_TABLES else F.col("customer_id").isin(*ids)
        count = ref.read(spark).where(condition).count()
        if count:
            ref.delta(spark).delete(condition)
        removed[key] = count
        touched.append(ref)

    refreshed = None
    if recompute and storage.table_ref(config, "persona_labels").exists(spark) \
            and storage.table_ref(config, "runs").exists(spark):
        from persona_lib.pipeline import republish

        refreshed = republish(spark, config, reason="forget")
        touched += [storage.table_ref(config, k) for k in
                    ("customer_affinity", "product_affinity", "persona_affinity", "customer_personas",
                     "product_personas")]
    purged = purge(spark, config, {ref.location: ref for ref in touched}.values())
    _remove_checkpoints(config)
    return {"removed": removed, "forgotten": len(ids), "purged_tables": purged,
            "republished_run": refreshed["run_id"] if refreshed else None}


def purge(spark: SparkSession, config: AppConfig, refs) -> list[str]:
    """Rewrite files with deleted rows away, then VACUUM them with the configured retention."""
    hours = config.forget.vacuum_retention_hours
    previous = spark.conf.get("spark.databricks.delta.retentionDurationCheck.enabled", "true")
    if config.forget.disable_retention_check:
        # Test configs purge at once (retention 0); production keeps the safety check on.
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        names = []
        for ref in refs:
            properties = ref.delta(spark).detail().select("properties").first()["properties"] or {}
            if str(properties.get("delta.enableDeletionVectors", "false")).lower() == "true":
                spark.sql(f"REORG TABLE {ref.sql_name} APPLY (PURGE)")
            spark.sql(f"VACUUM {ref.sql_name} RETAIN {hours} HOURS")
            names.append(ref.name)
        return names
    finally:
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", previous)


def _remove_checkpoints(config: AppConfig) -> None:
    folder = config.workdir_path / "checkpoints"
    if folder.is_dir():
        for child in folder.iterdir():
            shutil.rmtree(child, ignore_errors=True)
