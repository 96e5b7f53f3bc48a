"""The label store (persona_labels), the team's overrides (persona_overrides), and the views
of them the rest of the pipeline reads.

persona_labels holds one row per customer: the validated personas, the status, the backend
and model that answered (``source``), the versions of prompt and taxonomy and the hash of
the purchase history it saw, the raw answer and the run. A label is reused instead of asking
again while history_hash, prompt_version and taxonomy_version are unchanged -- unless it
failed (worth retrying), or it is a no_answer from another backend. A label loaded from a file
or table (source ``file:<name>``, ``file_labels``) is the team's answer: it is never re-sent
to an LLM nor overwritten by a labelling round, whatever changes.

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
from persona_lib.config import AppConfig, ForgetConfig
from persona_lib.errors import InputError
from persona_lib.labelling.answers import FINAL_STATUSES, LABEL_STATUSES, NO_ANSWER, UNREPRESENTABLE
from persona_lib.labelling.backends import read_or_empty
from persona_lib.spark import session_conf
from persona_lib.taxonomy import Taxonomy, load_taxonomy
from persona_lib.tombstones import customer_hash_column, tombstone_key

FILE_SOURCE = "file"


def labels_ref(spark: SparkSession, tables: storage.Tables) -> storage.TableRef:
    ref = tables.persona_labels
    storage.ensure_table(spark, ref, contracts.PERSONA_LABELS)
    return ref


def overrides_ref(spark: SparkSession, tables: storage.Tables) -> storage.TableRef:
    ref = tables.persona_overrides
    storage.ensure_table(spark, ref, contracts.PERSONA_OVERRIDES)
    return ref


def without_forgotten(spark: SparkSession, tables: storage.Tables, forget: ForgetConfig,
                      df: DataFrame) -> DataFrame:
    """``df`` without the rows of customers in the tombstones table (if there is one)."""
    tombstones = tables.tombstones
    if not tombstones.exists(spark):
        return df
    hashes = tombstones.read(spark).select("customer_hash")
    return (df.withColumn("customer_hash", customer_hash_column(F.col("customer_id"), tombstone_key(forget)))
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


def write_labels(spark: SparkSession, tables: storage.Tables, labels: DataFrame) -> None:
    """MERGE labels (PERSONA_LABELS columns) into the store, one row per customer."""
    storage.merge_upsert(spark, labels, labels_ref(spark, tables), contracts.PERSONA_LABELS,
                         keys=("customer_id",))


def add_overrides(spark: SparkSession, config: AppConfig, rows: Iterable[Mapping]) -> dict:
    """``upsert_overrides`` into the tables of ``config``, checked against its taxonomy."""
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    return upsert_overrides(spark, storage.resolve_tables(config), taxonomy, rows)


def upsert_overrides(spark: SparkSession, tables: storage.Tables, taxonomy: Taxonomy,
                     rows: Iterable[Mapping]) -> dict:
    """Upsert overrides: each row has customer_id, personas (list or "A|B"), author, optional reason.

    Persona names must be the taxonomy's (case, spacing and plural variants are mapped; a
    misspelling is an InputError naming the row and the persona it may mean, so a typo never
    becomes a label). An empty list, "" or ["Unrepresentable"] is "none of these": stored as
    an empty list, negative for every persona.
    """
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    records = []
    for index, row in enumerate(rows):
        where = f"override row {index} (customer_id {row.get('customer_id')!r})"
        customer_id, author = row.get("customer_id"), row.get("author")
        if not customer_id or not str(customer_id).strip():
            raise InputError(f"{where}: customer_id is required")
        if not author or not str(author).strip():
            raise InputError(f"{where}: author is required")
        names, problem = persona_names(row.get("personas"), taxonomy)
        if problem:
            raise InputError(f"{where}: {problem}")
        records.append((str(customer_id).strip(), names, str(author).strip(), row.get("reason"), now))
    if not records:
        return {"overrides": 0}
    frame = spark.createDataFrame(records, contracts.PERSONA_OVERRIDES)
    ref = overrides_ref(spark, tables)
    authors = sorted({r[2] for r in records})
    with commit_note(spark, {"action": "override add", "authors": authors,
                             "reasons": sorted({r[3] for r in records if r[3]})}):
        storage.merge_upsert(spark, frame, ref, contracts.PERSONA_OVERRIDES, keys=("customer_id",))
    return {"overrides": len(records), "table": ref.summary(spark)}


def remove_override(spark: SparkSession, tables: storage.Tables, customer_id: str, author: str,
                    reason: Optional[str]) -> dict:
    """Delete the override of ``customer_id``; its LLM or file label (if any) counts again.

    Who removed it and why is the Delta commit's userMetadata (DESCRIBE HISTORY
    persona_overrides), as for additions. No override for the customer is an InputError.
    """
    ref = tables.persona_overrides  # not created by a removal
    if not ref.exists(spark) or ref.read(spark).where(F.col("customer_id") == customer_id).limit(1).count() == 0:
        raise InputError(f"customer_id {customer_id!r} has no override in {ref.location}")
    with commit_note(spark, {"action": "override remove", "authors": [author], "reasons": [reason] if reason else []}):
        ref.delta(spark).delete(F.col("customer_id") == customer_id)
    return {"removed": 1, "customer_id": customer_id, "table": ref.summary(spark)}


def persona_names(personas, taxonomy: Taxonomy) -> tuple[list[str], Optional[str]]:
    """(canonical names, None) of a persona list or "A|B" text a person wrote, or ([], why not).

    An empty list or text, or "Unrepresentable" alone, is "none of these": ([], None).
    """
    if personas is None:
        personas = []
    if isinstance(personas, str):
        personas = personas.split("|") if personas.strip() else []
    names: list[str] = []
    for written in personas:
        text = str(written).strip()
        if not text:
            return [], f"empty persona name in {'|'.join(map(str, personas))!r}"
        persona, suggestion = taxonomy.match_strictly(text)
        if persona is None:
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            return [], (f"{text!r} is not a persona of taxonomy {taxonomy.name!r}{hint} "
                        f"(known: {', '.join(taxonomy.names)}; empty or {UNREPRESENTABLE!r} for none of these)")
        if persona not in names:
            names.append(persona)
    if UNREPRESENTABLE in names:
        if len(names) > 1:
            return [], f"{UNREPRESENTABLE!r} (none of these) cannot stand next to personas"
        return [], None
    return names, None


def commit_note(spark: SparkSession, note: Mapping):
    """Record ``note`` (JSON) as the userMetadata of the Delta commits made inside the block."""
    import json

    return session_conf(spark, {"spark.databricks.delta.commitInfo.userMetadata": json.dumps(note, sort_keys=True)})


def is_file_label(source: F.Column) -> F.Column:
    """Labels loaded by ``personas label --from-file/--from-table`` (source file or file:<name>):
    never sent to an LLM again, never overwritten by a labelling round."""
    return (source == FILE_SOURCE) | source.startswith(FILE_SOURCE + ":")


def file_labelled(spark: SparkSession, tables: storage.Tables) -> DataFrame:
    """customer_id of every customer with a file label."""
    return (read_or_empty(spark, tables.persona_labels)
            .where(is_file_label(F.col("source"))).select("customer_id"))


def labels_for_propagation(spark: SparkSession, tables: storage.Tables, forget: ForgetConfig) -> DataFrame:
    """customer_id, persona: the labels propagation seeds from.

    LLM labels with status ok or repaired, except for customers with an override, whose
    override's personas are used instead; forgotten customers are left out.
    """
    overrides = read_or_empty(spark, tables.persona_overrides).select("customer_id", "personas")
    llm = (read_or_empty(spark, tables.persona_labels)
           .where(F.col("status").isin(*LABEL_STATUSES))
           .select("customer_id", "personas")
           .join(overrides.select("customer_id"), "customer_id", "left_anti"))
    labelled = without_forgotten(spark, tables, forget, llm.unionByName(overrides))
    return labelled.select("customer_id", F.explode("personas").alias("persona")).distinct()


def label_distribution(spark: SparkSession, tables: storage.Tables, forget: ForgetConfig) -> dict[str, int]:
    """persona -> number of labels (Qhat of the DU sampler, before normalising)."""
    counts = labels_for_propagation(spark, tables, forget).groupBy("persona").count().collect()
    return {row["persona"]: int(row["count"]) for row in counts}


def status_counts(df: DataFrame) -> dict[str, int]:
    return {row["status"]: int(row["count"]) for row in df.groupBy("status").count().collect()}
