"""The persona tables users read, built from the propagation's raw affinities and the labels.

- persona_affinity: per customer and persona with a non-zero score: probability (scores
  normalised per customer), raw score, rank, source (llm, override, propagated).
  Labelled and overridden customers keep their labels: their rows are their labelled
  personas in the given order, probability 1/k each.
- customer_personas: per customer: personas (top-k propagated, or the labels), source,
  confidence, is_ambiguous and why (top contributing products with weights, labelled
  co-buyers reached, the LLM's answer for labelled customers).
- product_personas: per product and persona: the half-walk affinity.

Ambiguity: the bound only certifies that each score is within epsilon of exact, so two
personas whose scores differ by at most 2 x epsilon may be in either order: such a
customer, or one whose evidence mass (sum of scores) is below the configured floor, is
ambiguous, and downstream ranking does not condition on it.

A run publishes atomically through the ``runs`` table, written last with the version of
every output table: readers (the current_* views, ``persona_lib.query``) read those
versions, so they never see half a run; earlier runs stay readable by time travel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from persona_lib import contracts, storage
from persona_lib.config import AppConfig

OUTPUT_TABLES = ("persona_affinity", "customer_personas", "product_personas")
SOURCES = ("llm", "override", "propagated")


@dataclass(frozen=True)
class PublishInputs:
    """What one run publishes from."""

    run_id: str
    customers: DataFrame  # customer_id: every customer of the run
    edges: DataFrame  # customer_id, product_id (the graph's distinct pairs)
    customer_affinity: DataFrame  # customer_id, persona, score
    product_affinity: DataFrame  # product_id, persona, score
    llm_labels: DataFrame  # customer_id, personas (array, in the LLM's order), raw_response
    overrides: DataFrame  # customer_id, personas (array)
    products: DataFrame  # product_id, title
    epsilon: float


def label_rows(llm_labels: DataFrame, overrides: DataFrame) -> DataFrame:
    """(customer_id, personas, source, evidence): an override wins over the LLM's answer."""
    override_rows = overrides.select("customer_id", "personas", F.lit("override").alias("source"),
                                     F.lit(None).cast("string").alias("evidence"))
    llm_rows = (
        llm_labels.join(overrides.select("customer_id"), "customer_id", "left_anti")
        .select("customer_id", "personas", F.lit("llm").alias("source"),
                F.col("raw_response").alias("evidence"))
    )
    return override_rows.unionByName(llm_rows)


def ranked_affinity(customer_affinity: DataFrame) -> DataFrame:
    """Non-zero scores with probability (normalised per customer) and rank (1 = best)."""
    per_customer = Window.partitionBy("customer_id")
    by_score = Window.partitionBy("customer_id").orderBy(F.desc("score"), F.asc("persona"))
    positive = customer_affinity.where(F.col("score") > 0)
    return positive.select(
        "customer_id", "persona", "score",
        (F.col("score") / F.sum("score").over(per_customer)).alias("probability"),
        F.row_number().over(by_score).cast("int").alias("rank"),
    )


def build_persona_affinity(inputs: PublishInputs, labels: DataFrame, computed_at) -> DataFrame:
    propagated = (
        ranked_affinity(inputs.customer_affinity)
        .join(labels.select("customer_id"), "customer_id", "left_anti")
        .withColumn("source", F.lit("propagated"))
    )
    labelled = labels.select(
        "customer_id", "source",
        F.posexplode("personas").alias("position", "persona"),
        F.size("personas").alias("n_labels"),
    )
    labelled = (
        labelled.join(inputs.customer_affinity, ["customer_id", "persona"], "left")
        .select(
            "customer_id", "persona",
            F.coalesce(F.col("score"), F.lit(0.0)).alias("score"),
            (F.lit(1.0) / F.col("n_labels")).alias("probability"),
            (F.col("position") + 1).cast("int").alias("rank"),
            "source",
        )
    )
    return propagated.unionByName(labelled).select(
        "customer_id", "persona", "probability", "score", "rank", "source",
        F.lit(inputs.run_id).alias("run_id"), F.lit(computed_at).cast("timestamp").alias("computed_at"),
    )


def why_products(inputs: PublishInputs, top_persona: DataFrame, limit: int) -> DataFrame:
    """(customer_id, products): the products that contribute most to the customer's top persona.

    A product v of customer u contributes (1/d(u)) x product_affinity[v, m] to u's one-step
    walk score for persona m, which is what the weight reports.
    """
    degree = inputs.edges.groupBy("customer_id").agg(F.count(F.lit(1)).alias("degree"))
    contributions = (
        inputs.edges.join(top_persona, "customer_id")
        .join(inputs.product_affinity, ["product_id", "persona"])
        .join(degree, "customer_id")
        .select("customer_id", "product_id", (F.col("score") / F.col("degree")).alias("weight"))
    )
    best = Window.partitionBy("customer_id").orderBy(F.desc("weight"), F.asc("product_id"))
    top = (
        contributions.withColumn("_rank", F.row_number().over(best)).where(F.col("_rank") <= limit)
        .join(inputs.products.select("product_id", "title"), "product_id", "left")
    )
    return top.groupBy("customer_id").agg(
        F.transform(
            F.array_sort(F.collect_list(F.struct("_rank", "product_id", "title", "weight"))),
            lambda s: F.struct(s["product_id"].alias("product_id"), s["title"].alias("title"),
                               s["weight"].alias("weight")),
        ).alias("products")
    )


def labelled_neighbours(inputs: PublishInputs, labels: DataFrame) -> DataFrame:
    """(customer_id, labelled_neighbours): labelled co-buyers reached, counted per shared product.

    Counting per shared product (not distinct) keeps this one join over the edges instead of
    a customer x customer self-join that grows with the square of product popularity.
    """
    labelled_buyers = (
        inputs.edges.join(labels.select("customer_id"), "customer_id")
        .groupBy("product_id").agg(F.count(F.lit(1)).alias("labelled_buyers"))
    )
    self_labelled = labels.select("customer_id", F.lit(1).alias("_self"))
    return (
        inputs.edges.join(labelled_buyers, "product_id")
        .join(self_labelled, "customer_id", "left")
        .groupBy("customer_id")
        .agg(F.sum(F.col("labelled_buyers") - F.coalesce(F.col("_self"), F.lit(0))).cast("long")
             .alias("labelled_neighbours"))
    )


def build_customer_personas(inputs: PublishInputs, labels: DataFrame, ranked: DataFrame,
                            top_k: int, evidence_floor: float, why_limit: int, computed_at) -> DataFrame:
    margin = 2.0 * inputs.epsilon
    per_customer = ranked.groupBy("customer_id").agg(
        F.transform(
            F.slice(F.array_sort(F.collect_list(F.struct("rank", "persona", "probability"))), 1, top_k),
            lambda s: s["persona"],
        ).alias("top_personas"),
        F.max(F.when(F.col("rank") == 1, F.col("score"))).alias("score_1"),
        F.max(F.when(F.col("rank") == 2, F.col("score"))).alias("score_2"),
        F.sum(F.when(F.col("rank") <= top_k, F.col("probability"))).alias("covered"),
        F.sum("score").alias("evidence_mass"),
    )
    top_persona = ranked.where(F.col("rank") == 1).select("customer_id", "persona")
    why = why_products(inputs, top_persona, why_limit)
    neighbours = labelled_neighbours(inputs, labels)
    everyone = inputs.customers.select("customer_id").distinct()
    joined = (
        everyone.join(per_customer, "customer_id", "left")
        .join(labels, "customer_id", "left")
        .join(why, "customer_id", "left")
        .join(neighbours, "customer_id", "left")
    )
    is_labelled = F.col("source").isNotNull()
    propagated_ambiguous = (
        F.col("score_1").isNull()
        | (F.col("score_1") - F.coalesce(F.col("score_2"), F.lit(0.0)) <= F.lit(margin))
        | (F.col("evidence_mass") < F.lit(evidence_floor))
    )
    empty_products = F.array().cast("array<struct<product_id:string,title:string,weight:double>>")
    return joined.select(
        "customer_id",
        F.when(is_labelled, F.col("personas"))
        .otherwise(F.coalesce(F.col("top_personas"), F.array().cast("array<string>"))).alias("personas"),
        F.coalesce(F.col("source"), F.lit("propagated")).alias("source"),
        F.when(is_labelled, F.lit(1.0)).otherwise(F.coalesce(F.col("covered"), F.lit(0.0))).alias("confidence"),
        F.when(is_labelled, F.lit(False)).otherwise(propagated_ambiguous).alias("is_ambiguous"),
        F.struct(
            F.coalesce(F.col("products"), empty_products).alias("products"),
            F.coalesce(F.col("labelled_neighbours"), F.lit(0)).cast("long").alias("labelled_neighbours"),
            F.substring(F.col("evidence"), 1, 2000).alias("llm_evidence"),
        ).alias("why"),
        F.lit(inputs.run_id).alias("run_id"),
        F.lit(computed_at).cast("timestamp").alias("computed_at"),
    )


def build_product_personas(inputs: PublishInputs) -> DataFrame:
    return inputs.product_affinity.where(F.col("score") > 0).select(
        "product_id", "persona", "score", F.lit(inputs.run_id).alias("run_id"))


def publish(spark: SparkSession, config: AppConfig, inputs: PublishInputs, computed_at) -> dict:
    """Write the three output tables (one overwrite commit each); returns their versions."""
    labels = label_rows(inputs.llm_labels, inputs.overrides).cache()
    ranked = ranked_affinity(inputs.customer_affinity).cache()
    try:
        outputs = {
            "persona_affinity": (build_persona_affinity(inputs, labels, computed_at), contracts.PERSONA_AFFINITY),
            "customer_personas": (
                build_customer_personas(inputs, labels, ranked, config.publishing.top_k,
                                        config.publishing.evidence_floor, config.publishing.why_products,
                                        computed_at),
                contracts.CUSTOMER_PERSONAS),
            "product_personas": (build_product_personas(inputs), contracts.PRODUCT_PERSONAS),
        }
        versions = {}
        for key, (df, schema) in outputs.items():
            ref = storage.table_ref(config, key)
            storage.overwrite(df, ref, schema)
            versions[key] = ref.summary(spark)
        return versions
    finally:
        labels.unpersist()
        ranked.unpersist()


# --------------------------------------------------------------------------- the runs table


def record_run(spark: SparkSession, config: AppConfig, run_id: str, status: str, started_at,
               finished_at, table_versions: dict, summary: Optional[dict] = None) -> None:
    """Upsert the run's row: the commit point a reader trusts (written after every output)."""
    ref = storage.table_ref(config, "runs")
    row = spark.createDataFrame(
        [(run_id, status, started_at, finished_at, {k: int(v) for k, v in table_versions.items()},
          json.dumps(summary, default=str) if summary is not None else None)],
        contracts.RUNS,
    )
    storage.merge_upsert(spark, row, ref, contracts.RUNS, ["run_id"])


def latest_complete_run(spark: SparkSession, config: AppConfig) -> Optional[dict]:
    """The newest run whose status is complete: its id and table versions (None if no run)."""
    ref = storage.table_ref(config, "runs")
    if not ref.exists(spark):
        return None
    row = (ref.read(spark).where(F.col("status") == "complete")
           .orderBy(F.desc("finished_at"), F.desc("run_id")).limit(1).collect())
    if not row:
        return None
    return {"run_id": row[0]["run_id"], "table_versions": dict(row[0]["table_versions"]),
            "finished_at": row[0]["finished_at"]}


def read_current(spark: SparkSession, config: AppConfig, key: str) -> DataFrame:
    """An output table as of the latest complete run (never a half-published run)."""
    from persona_lib.errors import InputError

    run = latest_complete_run(spark, config)
    if run is None or key not in run["table_versions"]:
        raise InputError(f"no complete run has published {key} yet: run `personas run` first "
                         f"(work dir {config.workdir_path})")
    return storage.table_ref(config, key).read(spark, version=run["table_versions"][key])


# The tables a SQL user reads by name (docs/sql.md), besides the current_* views.
SQL_TABLES = ("purchase_events", "products", "quarantine", "ingest_log", "persona_labels", "persona_overrides",
              "persona_affinity", "customer_personas", "product_personas", "runs")
LOCAL_SCHEMA = "personas"


def register_views(spark: SparkSession, config: AppConfig) -> list[str]:
    """Name the tables and views in SQL and make their schema the current one.

    Views: ``current_<table>`` for each output, pinned to the versions of the latest complete
    run (``VERSION AS OF``), and ``customer_purchases`` over purchase_events.

    - On a catalog the views are persistent, next to the tables (``catalog.schema.current_*``);
      the pipeline replaces them after every complete run, so SQL-only users always read the
      latest complete run.
    - Locally the session catalog gets a ``personas`` schema holding each table of
      ``SQL_TABLES`` (external, by location) and the views. Spark's local catalog lives as long
      as the session, so every process registers them again (``personas sql`` does).

    Either way the schema becomes the current one, so docs/sql.md's recipes, which use bare
    names, run as written. Returns the qualified names of the views.
    """
    runs = storage.table_ref(config, "runs")
    if runs.is_catalog:
        schema = ".".join(runs.location.split(".")[:-1])
        name_of = lambda key: storage.table_ref(config, key).location  # noqa: E731
    else:
        schema = LOCAL_SCHEMA
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for key in SQL_TABLES:
            ref = storage.table_ref(config, key)
            # DROP of an external table forgets its name, never its files; a name may point at
            # another work dir's table from an earlier registration in this session.
            spark.sql(f"DROP TABLE IF EXISTS {schema}.{key}")
            if ref.exists(spark):
                spark.sql(f"CREATE TABLE {schema}.{key} USING delta LOCATION '{_sql_string(ref.location)}'")
        name_of = lambda key: f"{schema}.{key}"  # noqa: E731
    statements = {}
    if storage.table_ref(config, "purchase_events").exists(spark):
        statements["customer_purchases"] = f"SELECT * FROM {name_of('purchase_events')}"
    run = latest_complete_run(spark, config)
    for key in OUTPUT_TABLES:
        version = None if run is None else run["table_versions"].get(key)
        if version is not None:
            statements[f"current_{key}"] = f"SELECT * FROM {name_of(key)} VERSION AS OF {int(version)}"
    names = []
    for view, select in statements.items():
        spark.sql(f"CREATE OR REPLACE VIEW {schema}.{view} AS {select}")
        names.append(f"{schema}.{view}")
    spark.sql(f"USE {schema}")
    return names


def _sql_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
