"""Segmentation stability: RFM deciles versus dominant personas over two six-month halves.

Customers with more than ``evaluation.stability_min_invoices`` distinct invoices in the
year (the paper: 300 customers with more than 10 transactions) are represented in each half
(a) by their RFM deciles (recency, frequency, monetary, each a decile among those
customers in that half) and (b) by their 3 dominant personas. The share whose representation
is the same in both halves is reported (paper: RFM 1.3%, personas 18%), with the k-means
silhouette of each representation (MLlib KMeans + ClusteringEvaluator, per half, averaged).

Each half's personas are built without the recorded customer answers (they cover the whole
year): every customer of the half is seeded with the personas its products' LLM labels name
most often in that half (top 3), and those seeds are propagated on that half's purchase graph
(``persona_lib.propagation``); the dominant 3 are the top 3 of the resulting affinity.
Events come from the paper cut's purchase_events (products keyed by their stripped title,
as the product labels are): ``personas ingest --cut paper`` first.
"""

from __future__ import annotations

import logging
import time

from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from persona_lib import storage
from persona_lib.config import AppConfig
from persona_lib.errors import InputError
from persona_lib.evaluation import accuracy, data, metrics
from persona_lib.graph import build_graph, edges_from_pairs
from persona_lib.propagation import propagate

log = logging.getLogger("personas.evaluation")

DOMINANT = 3
DECILES = 10
SECONDS_PER_DAY = 86400.0


def active_customers(events: DataFrame, min_invoices: int) -> DataFrame:
    """customer_id of the customers with more than ``min_invoices`` distinct invoices."""
    return events.groupBy("customer_id").agg(F.countDistinct("invoice_no").alias("invoices")) \
        .where(F.col("invoices") > min_invoices).select("customer_id")


def halves(events: DataFrame) -> tuple[DataFrame, DataFrame, object, object]:
    """(first, second, end of first, end of second): the events split at six months after the first."""
    bounds = events.agg(F.min("event_ts").alias("start"), F.max("event_ts").alias("end")).first()
    middle = F.add_months(F.lit(bounds["start"]).cast("timestamp"), 6).cast("timestamp")
    first = events.where(F.col("event_ts") < middle)
    second = events.where(F.col("event_ts") >= middle)
    middle_value = events.sparkSession.range(1).select(middle.alias("m")).first()["m"]
    return first, second, middle_value, bounds["end"]


def rfm_deciles(events: DataFrame, customers: DataFrame, as_of) -> DataFrame:
    """(customer_id, recency, frequency, monetary, r, f, m): raw RFM and deciles among ``customers``.

    A customer with no purchase in the half gets recency = the half's length, frequency and
    monetary 0 (it still has a representation)."""
    per_customer = events.groupBy("customer_id").agg(
        F.max("event_ts").alias("last"), F.countDistinct("invoice_no").alias("frequency"),
        F.sum(F.col("quantity") * F.col("unit_price")).alias("monetary"))
    start = events.agg(F.min("event_ts")).first()[0]
    reference = F.lit(as_of).cast("timestamp")
    rfm = customers.join(per_customer, "customer_id", "left").select(
        "customer_id",
        ((F.unix_timestamp(reference) - F.unix_timestamp(F.coalesce("last", F.lit(start).cast("timestamp"))))
         / SECONDS_PER_DAY).alias("recency"),
        F.coalesce("frequency", F.lit(0)).cast("double").alias("frequency"),
        F.coalesce("monetary", F.lit(0.0)).alias("monetary"))
    # Deciles of a few hundred customers: one global window is fine at this size.
    decile = lambda column, ascending: F.ntile(DECILES).over(
        Window.orderBy(F.asc(column) if ascending else F.desc(column), F.asc("customer_id")))
    return rfm.select("*", decile("recency", True).alias("r"), decile("frequency", False).alias("f"),
                      decile("monetary", False).alias("m"))


def half_personas(spark: SparkSession, config: AppConfig, events: DataFrame, item_labels: DataFrame) -> DataFrame:
    """(customer_id, persona, score): the half's walk affinity from product-label seeds."""
    pairs = events.select("customer_id", "product_id").distinct()
    counts = pairs.join(item_labels, "product_id").groupBy("customer_id", "persona").agg(
        F.count(F.lit(1)).cast("double").alias("score"))
    seeds = metrics.top_k(counts, DOMINANT, "customer_id", "persona").select("customer_id", "persona")
    graph = build_graph(edges_from_pairs(pairs))
    affinity = propagate(spark, graph, seeds, config.propagation).customer_affinity
    graph.unpersist()
    return affinity


def dominant(affinity: DataFrame, customers: DataFrame) -> DataFrame:
    """(customer_id, dominant): the sorted top-3 personas of each customer (empty if none)."""
    top = metrics.top_k(affinity.join(customers, "customer_id", "left_semi"), DOMINANT, "customer_id", "persona")
    sets = top.groupBy("customer_id").agg(F.array_sort(F.collect_list("persona")).alias("dominant"))
    return customers.join(sets, "customer_id", "left").select(
        "customer_id", F.coalesce("dominant", F.array().cast("array<string>")).alias("dominant"))


def silhouette(features: DataFrame, columns: list[str], k: int, seed: int = 7) -> float:
    """Silhouette (squared Euclidean) of MLlib k-means with ``k`` clusters on standardised columns."""
    assembled = VectorAssembler(inputCols=columns, outputCol="raw").transform(features)
    scaled = StandardScaler(inputCol="raw", outputCol="features", withMean=True, withStd=True) \
        .fit(assembled).transform(assembled).cache()
    model = KMeans(k=k, seed=seed, featuresCol="features").fit(scaled)
    value = ClusteringEvaluator(featuresCol="features").evaluate(model.transform(scaled))
    scaled.unpersist()
    return float(value)


def evaluate_stability(spark: SparkSession, config: AppConfig) -> dict:
    started = time.monotonic()
    cfg = config.evaluation
    events_ref = storage.table_ref(config, "paper_purchase_events")
    if not events_ref.exists(spark):
        raise InputError(f"{events_ref.location}: no paper-cut purchase_events; run "
                         "`personas ingest --cut paper` with the same --workdir first")
    events = events_ref.read(spark).select("customer_id", "product_id", "invoice_no", "quantity",
                                          "unit_price", "event_ts").localCheckpoint(eager=True)
    customers = active_customers(events, cfg.stability_min_invoices).localCheckpoint(eager=True)
    customer_count = customers.count()
    item_labels = data.item_labels(spark, config)
    first, second, middle, end = halves(events)
    persona_names = sorted(r["persona"] for r in item_labels.select("persona").distinct().collect())
    share_columns = [f"share_{i}" for i in range(len(persona_names))]

    representations = []
    silhouettes = {"rfm": [], "personas": []}
    for half, as_of in ((first, middle), (second, end)):
        rfm = rfm_deciles(half, customers, as_of).localCheckpoint(eager=True)
        affinity = half_personas(spark, config, half, item_labels)
        shares = accuracy.persona_features(
            customers, persona_names, _products(half), affinity, None) \
            .groupBy("customer_id").pivot("persona", persona_names).agg(F.first("walk_share")).fillna(0.0) \
            .toDF("customer_id", *share_columns)  # plain names: persona names hold blanks and dashes
        representations.append(rfm.select("customer_id", "r", "f", "m").join(dominant(affinity, customers), "customer_id"))
        k = min(cfg.stability_clusters, max(2, customer_count - 1))
        silhouettes["rfm"].append(silhouette(rfm, ["recency", "frequency", "monetary"], k))
        silhouettes["personas"].append(silhouette(shares, share_columns, k))
    a, b = representations
    joined = a.alias("a").join(b.alias("b"), "customer_id")
    row = joined.agg(
        F.avg(((F.col("a.r") == F.col("b.r")) & (F.col("a.f") == F.col("b.f"))
               & (F.col("a.m") == F.col("b.m"))).cast("double")).alias("rfm"),
        F.avg((F.col("a.dominant") == F.col("b.dominant")).cast("double")).alias("personas"),
    ).first()
    return {
        "customers": customer_count, "min_invoices": cfg.stability_min_invoices,
        "unchanged_rfm": float(row["rfm"]), "unchanged_personas": float(row["personas"]),
        "silhouette_rfm": sum(silhouettes["rfm"]) / 2, "silhouette_personas": sum(silhouettes["personas"]) / 2,
        "paper_unchanged_rfm": 0.013, "paper_unchanged_personas": 0.18,
        "seconds": round(time.monotonic() - started, 1),
    }


def format_table(result: dict) -> str:
    return "\n".join([
        f"customers with > {result['min_invoices']} invoices: {result['customers']}",
        f"{'representation':<18}{'unchanged':>10}{'paper':>8}{'silhouette':>12}",
        f"{'RFM deciles':<18}{result['unchanged_rfm']:>10.3f}{result['paper_unchanged_rfm']:>8.3f}"
        f"{result['silhouette_rfm']:>12.3f}",
        f"{'dominant 3':<18}{result['unchanged_personas']:>10.3f}{result['paper_unchanged_personas']:>8.3f}"
        f"{result['silhouette_personas']:>12.3f}",
    ])



def _products(events: DataFrame) -> DataFrame:
    return events.groupBy("customer_id").agg(F.countDistinct("product_id").alias("products"))
