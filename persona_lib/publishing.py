"""The persona tables users read, built from the persona model's scores and the labels.

- persona_affinity: per customer and persona: probability, raw walk score, rank, source.
  For propagated customers the probability is the persona model's calibrated probability
  that the LLM would name the persona (persona_lib.persona_model): multi-label, so a
  customer's probabilities do not sum to 1; rank orders them (1 = most probable); score is
  the raw walk affinity, certified within epsilon (0 where the walk did not reach).
  Labelled and overridden customers keep their labels: their rows are their labelled
  personas in the given order, probability 1 (the label is known).
- customer_personas: per customer: personas (the model's decided set: every persona at or
  above its threshold, at least the most probable one; or the labels), source, confidence
  (the mean calibrated probability of the published personas: their expected precision),
  is_ambiguous and why (products with their share of the top persona's evidence, distinct
  labelled co-buyers, and for labelled customers their validated personas).
- product_personas: per product and persona: the half-walk affinity.

Ambiguity ("the published set is not certain"): a propagated customer is ambiguous when
(a) the epsilon certificate lets some persona's probability fall on either side of its
threshold (persona_model propagates the +/- epsilon score box through the model), or
(b) its evidence is thin: no labelled customer reached (no labelled co-buyer) or fewer than
``model.min_products`` distinct products. Downstream ranking does not condition on it.

A run publishes atomically through the ``runs`` table, written last with the version of
every output table: readers (the current_* views, ``persona_lib.query``) read those
versions, so they never see half a run; earlier runs stay readable by time travel.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from persona_lib import contracts, storage
from persona_lib.config import AppConfig, PublishingConfig
from persona_lib.spark import map_arrow_batches, session_conf
from persona_lib.storage import TableRef, Tables

OUTPUT_TABLES = ("persona_affinity", "customer_personas", "product_personas")


@dataclass(frozen=True)
class PublishInputs:
    """What one run publishes from."""

    run_id: str
    customers: DataFrame  # customer_id: every customer of the run
    edges: DataFrame  # customer_id, product_id (the graph's distinct pairs)
    customer_affinity: DataFrame  # customer_id, persona, score
    product_affinity: DataFrame  # product_id, persona, score
    llm_labels: DataFrame  # customer_id, personas (array, in the LLM's order)
    overrides: DataFrame  # customer_id, personas (array)
    products: DataFrame  # product_id, title
    epsilon: float
    # persona_model.score: customer_id, persona, score, probability, probability_low,
    # probability_high, threshold, products
    persona_scores: DataFrame = None  # type: ignore[assignment]


def label_rows(llm_labels: DataFrame, overrides: DataFrame) -> DataFrame:
    """(customer_id, personas, source): an override wins over the LLM's answer."""
    override_rows = overrides.select("customer_id", "personas", F.lit("override").alias("source"))
    llm_rows = (
        llm_labels.join(overrides.select("customer_id"), "customer_id", "left_anti")
        .select("customer_id", "personas", F.lit("llm").alias("source"))
    )
    return override_rows.unionByName(llm_rows)


def build_persona_affinity(inputs: PublishInputs, labels: DataFrame, computed_at) -> DataFrame:
    by_probability = Window.partitionBy("customer_id").orderBy(F.desc("probability"), F.asc("persona"))
    propagated = (
        inputs.persona_scores.join(labels.select("customer_id"), "customer_id", "left_anti")
        .select("customer_id", "persona", "probability", "score",
                F.row_number().over(by_probability).cast("int").alias("rank"),
                F.lit("propagated").alias("source"))
    )
    labelled = labels.select(
        "customer_id", "source",
        F.posexplode("personas").alias("position", "persona"),
    )
    labelled = (
        labelled.join(inputs.customer_affinity, ["customer_id", "persona"], "left")
        .select(
            "customer_id", "persona",
            F.lit(1.0).alias("probability"),
            F.coalesce(F.col("score"), F.lit(0.0)).alias("score"),
            (F.col("position") + 1).cast("int").alias("rank"),
            "source",
        )
    )
    return propagated.unionByName(labelled).select(
        "customer_id", "persona", "probability", "score", "rank", "source",
        F.lit(inputs.run_id).alias("run_id"), F.lit(computed_at).cast("timestamp").alias("computed_at"),
    )


WHY_SCHEMA = "customer_id string, products array<struct<product_id:string,title:string,weight:double>>"


def why_products(inputs: PublishInputs, top_persona: DataFrame, limit: int) -> DataFrame:
    """(customer_id, products): the products that contribute most to the customer's top persona.

    A product v of customer u contributes (1/d(u)) x product_affinity[v, m] to u's one-step
    walk score for persona m; the weight is its share of the sum over u's products, so a
    customer's weights of one persona sum to 1 over all its contributing products. Ties go to
    the smaller product_id; customers without a contributing product have no row.

    Each customer's products are gathered into one row, and each Arrow batch of those rows is
    ranked with numpy against the product affinities, broadcast once as a dense products x
    personas array (the persona model's scoring tables are the same size). Before, every edge
    was joined with its customer's top persona and then with the affinities (two shuffles of
    every edge), and a window per customer sorted all of them.
    """
    from persona_lib.persona_model import dense_table

    affinity = inputs.product_affinity.where(F.col("score") > 0).select("product_id", "persona", "score").toPandas()
    # Sorted, a product's index orders it as Spark orders product_id (UTF-8 byte order is code point order).
    products = pd.Index(np.sort(affinity["product_id"].unique().astype(object)))
    personas = sorted(affinity["persona"].unique())
    titles = (inputs.products.join(inputs.product_affinity.select("product_id").distinct(), "product_id", "left_semi")
              .select("product_id", "title").toPandas().drop_duplicates("product_id").set_index("product_id")["title"])
    # A new array, never written in place: pandas may hand back a read-only view of its data.
    reindexed = titles.reindex(products).to_numpy(dtype=object)
    product_titles = np.where(pd.isna(reindexed), None, reindexed).astype(object)
    tables = WhyTables(products=products, personas=pd.Index(personas),
                       scores=dense_table(products, personas, affinity, "score"), titles=product_titles)
    rows = (inputs.edges.join(top_persona, "customer_id").groupBy("customer_id", "persona")
            .agg(F.collect_list("product_id").alias("products")))
    return map_arrow_batches(rows, tables, lambda shared, batch: [_why_batch(shared, batch, limit)], WHY_SCHEMA)


@dataclass(frozen=True)
class WhyTables:
    """The product layer ``why_products`` ranks against: affinity scores (products x personas),
    product ids in sorted order and their titles."""

    products: pd.Index
    personas: pd.Index
    scores: np.ndarray
    titles: np.ndarray


def _why_batch(tables: WhyTables, batch, limit: int):
    """One Arrow batch of (customer_id, persona, products) rows -> (customer_id, products) rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids, baskets = batch.column(0), batch.column(2)
    persona_at = tables.personas.get_indexer(batch.column(1).to_numpy(zero_copy_only=False))
    owner = pc.list_parent_indices(baskets).to_numpy()
    product_at = tables.products.get_indexer(pc.list_flatten(baskets).to_numpy(zero_copy_only=False))
    known = (product_at >= 0) & (persona_at[owner] >= 0)
    owner, product_at = owner[known], product_at[known]
    score = tables.scores[product_at, persona_at[owner]]
    owner, product_at, score = owner[score > 0], product_at[score > 0], score[score > 0]
    total = np.bincount(owner, weights=score, minlength=len(ids))
    order = np.lexsort((product_at, -score, owner))
    owner, product_at, score = owner[order], product_at[order], score[order]
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
    kept = rank < limit
    owner, product_at, weight = owner[kept], product_at[kept], score[kept] / total[owner[kept]]
    customers, counts = np.unique(owner, return_counts=True)
    entries = pa.StructArray.from_arrays(
        [pa.array(tables.products.to_numpy(dtype=object)[product_at], type=pa.string()),
         pa.array(tables.titles[product_at], type=pa.string()), pa.array(weight, type=pa.float64())],
        names=["product_id", "title", "weight"])
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), type=pa.int32())
    return pa.RecordBatch.from_arrays([ids.take(pa.array(customers, type=pa.int64())),
                                       pa.ListArray.from_arrays(offsets, entries)],
                                      names=["customer_id", "products"])


# What one task may hold in HyperLogLog union buffers (one per customer of its partition, each
# about 2^lg_config_k bytes) before Spark's object hash aggregation falls back to sorting its
# input. Spark's default allows 128 customers: past them every (edge, sketch) row is sorted, and
# at 13.3M edges that sort spilled 4.8 GB.
UNION_BUFFER_BYTES_PER_TASK = 128 * 2**20


def labelled_neighbours(edges: DataFrame, labels: DataFrame, lg_config_k: int, broadcast_mib: int = 64) -> DataFrame:
    """(customer_id, labelled_neighbours): DISTINCT labelled co-buyers, the customer excluded;
    materialised (a local checkpoint).

    Per product, a HyperLogLog sketch of its labelled buyers; per customer, the union of its
    products' sketches. That is one join over the edges, never a customer x customer
    self-join (which grows with the square of product popularity). The union's cost grows
    with edges x 2^lg_config_k registers; the estimate is exact for small counts and within
    about 1.04 / sqrt(2^lg_config_k) beyond (``publishing.neighbour_sketch_lg_k``).

    When the sketches fit in ``broadcast_mib`` (``publishing.neighbour_sketch_broadcast_mib``)
    they go to every task: the edges are shuffled once by customer, as (customer, product)
    pairs, and each task unions its own customers' sketches in a hash map, with no sort and no
    second shuffle. Larger sketches are joined by product, and their unions shuffled by customer.
    """
    spark = edges.sparkSession
    pairs = edges.select("customer_id", "product_id")
    sketches = (
        pairs.join(labels.select("customer_id"), "customer_id", "left_semi")
        .groupBy("product_id").agg(F.hll_sketch_agg("customer_id", lg_config_k).alias("_sketch"))
        .localCheckpoint(eager=True)
    )
    sketch_bytes = sketches.agg(F.coalesce(F.sum(F.octet_length("_sketch")), F.lit(0))).first()[0]
    if sketch_bytes <= broadcast_mib * 2**20:
        with_sketches = pairs.repartition("customer_id").join(F.broadcast(sketches), "product_id")
    else:
        with_sketches = pairs.join(sketches, "product_id")
    self_labelled = labels.select("customer_id", F.lit(1).alias("_self"))
    buffers_per_task = max(128, UNION_BUFFER_BYTES_PER_TASK // (2**lg_config_k + 256))
    with session_conf(spark, {"spark.sql.objectHashAggregate.sortBased.fallbackThreshold": str(buffers_per_task)}):
        return (
            with_sketches.groupBy("customer_id")
            .agg(F.hll_sketch_estimate(F.hll_union_agg("_sketch")).alias("_reached"))
            .join(self_labelled, "customer_id", "left")
            .select("customer_id", F.greatest(F.col("_reached") - F.coalesce(F.col("_self"), F.lit(0)), F.lit(0))
                    .cast("long").alias("labelled_neighbours"))
            .localCheckpoint(eager=True)
        )


def ambiguity(uncertain, labelled_neighbours, products, min_products: int):
    """The is_ambiguous rule of a propagated customer: the certificate or thin evidence."""
    thin = (F.coalesce(labelled_neighbours, F.lit(0)) <= 0) | (F.coalesce(products, F.lit(0)) < F.lit(min_products))
    return F.coalesce(uncertain, F.lit(True)) | thin


def build_customer_personas(spark: SparkSession, inputs: PublishInputs, labels: DataFrame, min_products: int,
                            settings: PublishingConfig, computed_at) -> DataFrame:
    from persona_lib import persona_model

    decided = persona_model.decide(inputs.persona_scores)
    sizes = inputs.edges.groupBy("customer_id").agg(F.count(F.lit(1)).alias("_products"))
    neighbours = labelled_neighbours(inputs.edges, labels, settings.neighbour_sketch_lg_k,
                                     settings.neighbour_sketch_broadcast_mib)
    top_persona = (decided.select("customer_id", F.element_at("personas", 1).alias("persona"))
                   .where(F.col("persona").isNotNull()))
    why = why_products(inputs, top_persona, settings.why_products)
    everyone = inputs.customers.select("customer_id").distinct()
    joined = (
        everyone.join(decided, "customer_id", "left")
        .join(labels.withColumnRenamed("personas", "labelled_personas"), "customer_id", "left")
        .join(sizes, "customer_id", "left")
        .join(why, "customer_id", "left")
        .join(neighbours, "customer_id", "left")
    )
    is_labelled = F.col("source").isNotNull()
    has_evidence = F.coalesce(F.col("labelled_neighbours"), F.lit(0)) > 0
    empty_products = F.array().cast("array<struct<product_id:string,title:string,weight:double>>")
    no_personas = F.array().cast("array<string>")
    return joined.select(
        "customer_id",
        F.when(is_labelled, F.col("labelled_personas"))
        .when(has_evidence, F.coalesce(F.col("personas"), no_personas)).otherwise(no_personas).alias("personas"),
        F.coalesce(F.col("source"), F.lit("propagated")).alias("source"),
        F.when(is_labelled, F.lit(1.0)).when(has_evidence, F.col("confidence")).otherwise(F.lit(None))
        .cast("double").alias("confidence"),
        F.when(is_labelled, F.lit(False))
        .otherwise(ambiguity(F.col("uncertain"), F.col("labelled_neighbours"), F.col("_products"), min_products))
        .alias("is_ambiguous"),
        F.struct(
            F.coalesce(F.col("products"), empty_products).alias("products"),
            F.coalesce(F.col("labelled_neighbours"), F.lit(0)).cast("long").alias("labelled_neighbours"),
            F.when(is_labelled, F.array_join(F.col("labelled_personas"), ", ")).alias("llm_evidence"),
        ).alias("why"),
        F.lit(inputs.run_id).alias("run_id"),
        F.lit(computed_at).cast("timestamp").alias("computed_at"),
    )


def build_product_personas(inputs: PublishInputs) -> DataFrame:
    return inputs.product_affinity.where(F.col("score") > 0).select(
        "product_id", "persona", "score", F.lit(inputs.run_id).alias("run_id"))


def publish(spark: SparkSession, tables: Tables, inputs: PublishInputs, computed_at,
            min_products: int, settings: PublishingConfig) -> dict:
    """Write the three output tables (one overwrite commit each); returns their versions.
    ``min_products``: ``model.min_products``; ``settings``: the ``publishing`` section."""
    if inputs.persona_scores is None:
        raise ValueError("publish needs the persona model's scores (PublishInputs.persona_scores)")
    labels = label_rows(inputs.llm_labels, inputs.overrides).cache()
    scores = inputs.persona_scores.localCheckpoint(eager=True)
    inputs = dataclasses.replace(inputs, persona_scores=scores)
    try:
        outputs = {
            "persona_affinity": (build_persona_affinity(inputs, labels, computed_at), contracts.PERSONA_AFFINITY),
            "customer_personas": (
                build_customer_personas(spark, inputs, labels, min_products, settings, computed_at),
                contracts.CUSTOMER_PERSONAS),
            "product_personas": (build_product_personas(inputs), contracts.PRODUCT_PERSONAS),
        }
        versions = {}
        for key, (df, schema) in outputs.items():
            ref = tables.get(key)
            storage.overwrite(df, ref, schema)
            versions[key] = ref.summary(spark)
        return versions
    finally:
        labels.unpersist()


# --------------------------------------------------------------------------- the runs table


def record_run(spark: SparkSession, runs: TableRef, run_id: str, status: str, started_at,
               finished_at, table_versions: dict, summary: Optional[dict] = None) -> None:
    """Upsert the run's row in the ``runs`` table: the commit point a reader trusts (written
    after every output)."""
    row = spark.createDataFrame(
        [(run_id, status, started_at, finished_at, {k: int(v) for k, v in table_versions.items()},
          json.dumps(summary, default=str) if summary is not None else None)],
        contracts.RUNS,
    )
    storage.merge_upsert(spark, row, runs, contracts.RUNS, ["run_id"])


def abandon_stale_runs(spark: SparkSession, runs: TableRef, config: AppConfig) -> list[str]:
    """Mark every ``running`` row of ``runs`` ``abandoned``: called by a job that holds the
    writer lock, so no other job can be running and such a row is a job that was killed (its
    MLflow run, found through ``config``'s tracking, is marked KILLED too). Returns the
    abandoned run ids."""
    import logging

    if not runs.exists(spark):
        return []
    stale = [r["run_id"] for r in runs.read(spark).where(F.col("status") == "running").select("run_id").collect()]
    if not stale:
        return []
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    runs.delta(spark).update(condition=F.col("status") == "running",
                             set={"status": F.lit("abandoned"), "finished_at": F.lit(now)})
    logging.getLogger("personas.publishing").warning(
        "marked %d run(s) left 'running' by a killed job as abandoned: %s", len(stale), stale)
    try:
        from mlflow import MlflowClient

        from persona_lib import tracking

        tracking.configure(config)
        client = MlflowClient()
        for run_id in stale:
            client.set_terminated(run_id, status="KILLED")
    except Exception as exc:  # noqa: BLE001 - the runs table is the record; MLflow's is a courtesy
        logging.getLogger("personas.publishing").warning("could not mark the MLflow runs KILLED: %s", exc)
    return stale


def latest_complete_run(spark: SparkSession, config: AppConfig) -> Optional[dict]:
    """The newest run whose status is complete: its id and table versions (None if no run)."""
    return latest_run(spark, storage.resolve_tables(config).runs)


def latest_run(spark: SparkSession, runs: TableRef) -> Optional[dict]:
    """The newest complete run of the ``runs`` table: its id, table versions and finish time
    (None if no run)."""
    if not runs.exists(spark):
        return None
    row = (runs.read(spark).where(F.col("status") == "complete")
           .orderBy(F.desc("finished_at"), F.desc("run_id")).limit(1).collect())
    if not row:
        return None
    return {"run_id": row[0]["run_id"], "table_versions": dict(row[0]["table_versions"]),
            "finished_at": row[0]["finished_at"]}


def read_current(spark: SparkSession, tables: Tables, key: str) -> DataFrame:
    """An output table as of the latest complete run (never a half-published run)."""
    from persona_lib.errors import InputError

    run = latest_run(spark, tables.runs)
    if run is None or key not in run["table_versions"]:
        raise InputError(f"no complete run has published {key} yet: run `personas run` first "
                         f"(runs table {tables.runs.location})")
    return tables.get(key).read(spark, version=run["table_versions"][key])


# The tables a SQL user reads by name (docs/sql.md), besides the current_* views.
SQL_TABLES = ("purchase_events", "products", "quarantine", "ingest_log", "persona_labels", "persona_overrides",
              "persona_affinity", "customer_personas", "product_personas", "runs")
LOCAL_SCHEMA = "personas"


def register_views(spark: SparkSession, config: AppConfig) -> list[str]:
    """``register_tables`` for the config's tables (the documented entry point)."""
    return register_tables(spark, storage.resolve_tables(config))


def register_tables(spark: SparkSession, tables: Tables) -> list[str]:
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
    runs = tables.runs
    if runs.is_catalog:
        schema = ".".join(runs.location.split(".")[:-1])
        name_of = lambda key: tables.get(key).location  # noqa: E731
    else:
        schema = LOCAL_SCHEMA
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for key in SQL_TABLES:
            ref = tables.get(key)
            # DROP of an external table forgets its name, never its files; a name may point at
            # another work dir's table from an earlier registration in this session.
            spark.sql(f"DROP TABLE IF EXISTS {schema}.{key}")
            if ref.exists(spark):
                spark.sql(f"CREATE TABLE {schema}.{key} USING delta LOCATION '{_sql_string(ref.location)}'")
        name_of = lambda key: f"{schema}.{key}"  # noqa: E731
    statements = {}
    if tables.purchase_events.exists(spark):
        statements["customer_purchases"] = f"SELECT * FROM {name_of('purchase_events')}"
    run = latest_run(spark, runs)
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
