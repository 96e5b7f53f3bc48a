"""The label store (persona_labels), the team's overrides (persona_overrides), and the views
of them the rest of the pipeline reads.

persona_labels holds one row per customer: the validated personas, the status, the backend
and model that answered (``source``), the versions of prompt and taxonomy and the hash of
the purchase history it saw, the raw answer and the run. A label is reused instead of asking
again while history_hash, prompt_version and taxonomy_version are unchanged -- unless it
failed (worth retrying), or it is a no_answer from another backend.

An override (persona_overrides) always wins: a customer with one is never sent to an LLM,
and ``labels_for_propagation`` uses the override in place of the LLM's label ("override as
training"). Forgotten customers (tombstones: HMAC-SHA256 of the id, ``persona_lib.forget``) are never labelled and
never read back.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable, Mapping, Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from persona_lib import contracts, storage
from persona_lib.config import AppConfig
from persona_lib.errors import InputError
from persona_lib.labelling.answers import FINAL_STATUSES, LABEL_STATUSES, NO_ANSWER, UNREPRESENTABLE
from persona_lib.labelling.backends import read_or_empty
from persona_lib.taxonomy import Taxonomy, load_taxonomy
from persona_lib.tombstones import customer_hash_column, tombstone_key


def labels_ref(spark: SparkSession, config: AppConfig) -> storage.TableRef:
    ref = storage.table_ref(config, "persona_labels")
    storage.ensure_table(spark, ref, contracts.PERSONA_LABELS)
    return ref


def overrides_ref(spark: SparkSession, config: AppConfig) -> storage.TableRef:
    ref = storage.table_ref(config, "persona_overrides")
    storage.ensure_table(spark, ref, contracts.PERSONA_OVERRIDES)
    return ref


def without_forgotten(spark: SparkSession, config: AppConfig, df: DataFrame) -> DataFrame:
    """``df`` without the rows of customers in the tombstones table (if there is one)."""
    tombstones = storage.table_ref(config, "tombstones")
    if not tombstones.exists(spark):
        return df
    hashes = tombstones.read(spark).select("customer_hash")
    return (df.withColumn("customer_hash", customer_hash_column(F.col("customer_id"), tombstone_key(config)))
            .join(hashes, "customer_hash", "left_anti").drop("customer_hash"))


def cached_labels(labels: DataFrame, prompts: DataFrame, taxonomy_version: str,
                  source: str, key: str = "customer_id", input_hash: str = "history_hash") -> DataFrame:
    """``key`` of the prompts whose stored label can be reused (see the module docstring).

    The same rule serves both stores: customers (key customer_id, input_hash history_hash)
    and products (product_id, title_hash).
    """
    reusable = F.col("status").isin(*FINAL_STATUSES) | (
        (F.col("status") == NO_ANSWER) & (F.col("source") == source))
    stored = labels.where(reusable & (F.col("taxonomy_version") == taxonomy_version)).select(
        key, F.col(input_hash).alias("stored_input_hash"),
        F.col("prompt_version").alias("stored_prompt_version"))
    return (
        prompts.join(stored, key)
        .where((F.col(input_hash) == F.col("stored_input_hash"))
               & (F.col("prompt_version") == F.col("stored_prompt_version")))
        .select(key)
    )


def write_labels(spark: SparkSession, config: AppConfig, labels: DataFrame) -> None:
    """MERGE labels (PERSONA_LABELS columns) into the store, one row per customer."""
    storage.merge_upsert(spark, labels, labels_ref(spark, config), contracts.PERSONA_LABELS,
                         keys=("customer_id",))


def add_overrides(spark: SparkSession, config: AppConfig, rows: Iterable[Mapping],
                  taxonomy: Optional[Taxonomy] = None) -> dict:
    """Upsert overrides: each row has customer_id, personas (list), author, optional reason.

    Persona names must be the taxonomy's (case and spacing variants are mapped); an unknown
    name is an InputError naming the row, so a typo never becomes a label.
    """
    if taxonomy is None:
        taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    records = []
    for index, row in enumerate(rows):
        where = f"override row {index} (customer_id {row.get('customer_id')!r})"
        customer_id, author = row.get("customer_id"), row.get("author")
        if not customer_id or not str(customer_id).strip():
            raise InputError(f"{where}: customer_id is required")
        if not author or not str(author).strip():
            raise InputError(f"{where}: author is required")
        personas = row.get("personas")
        if isinstance(personas, str):
            personas = [p for p in personas.split("|")]
        if not personas:
            raise InputError(f"{where}: personas must name at least one persona")
        names = []
        for name in personas:
            persona, _ = taxonomy.match(str(name).strip())
            if persona is None or persona == UNREPRESENTABLE:
                raise InputError(f"{where}: {name!r} is not a persona of taxonomy "
                                 f"{taxonomy.name!r} (known: {', '.join(taxonomy.names)})")
            if persona not in names:
                names.append(persona)
        records.append((str(customer_id).strip(), names, str(author).strip(), row.get("reason"), now))
    if not records:
        return {"overrides": 0}
    frame = spark.createDataFrame(records, contracts.PERSONA_OVERRIDES)
    ref = overrides_ref(spark, config)
    storage.merge_upsert(spark, frame, ref, contracts.PERSONA_OVERRIDES, keys=("customer_id",))
    return {"overrides": len(records), "table": ref.summary(spark)}


def labels_for_propagation(spark: SparkSession, config: AppConfig) -> DataFrame:
    """customer_id, persona: the labels propagation seeds from.

    LLM labels with status ok or repaired, except for customers with an override, whose
    override's personas are used instead; forgotten customers are left out.
    """
    overrides = read_or_empty(spark, config, "persona_overrides").select("customer_id", "personas")
    llm = (read_or_empty(spark, config, "persona_labels")
           .where(F.col("status").isin(*LABEL_STATUSES))
           .select("customer_id", "personas")
           .join(overrides.select("customer_id"), "customer_id", "left_anti"))
    labelled = without_forgotten(spark, config, llm.unionByName(overrides))
    return labelled.select("customer_id", F.explode("personas").alias("persona")).distinct()


def label_distribution(spark: SparkSession, config: AppConfig) -> dict[str, int]:
    """persona -> number of labels (Qhat of the DU sampler, before normalising)."""
    counts = labels_for_propagation(spark, config).groupBy("persona").count().collect()
    return {row["persona"]: int(row["count"]) for row in counts}


def status_counts(df: DataFrame) -> dict[str, int]:
    return {row["status"]: int(row["count"]) for row in df.groupBy("status").count().collect()}
