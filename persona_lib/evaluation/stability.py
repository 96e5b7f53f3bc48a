"""Segmentation stability: RFM deciles versus dominant personas over two six-month halves.

Customers with more than ``evaluation.stability_min_invoices`` distinct invoices in the
year (the paper: 300 customers with more than 10 transactions) are represented in each half
(a) by their RFM deciles (recency, frequency, monetary, each a decile among those
customers in that half) and (b) by their 3 dominant personas. The share whose representation
is the same in both halves is reported (paper: RFM 1.3%, personas 18%), with the k-means
silhouette of each representation (MLlib KMeans + ClusteringEvaluator, per half, averaged).

Each half's personas are built without the recorded customer answers (they cover the whole
year): every customer of the half is seeded with 3 personas from its products' LLM labels in
that half, those seeds are propagated on that half's purchase graph
(``persona_lib.propagation``), and the dominant 3 are read off the resulting affinity. Two
ways to pick the seeds and the dominant 3 are measured side by side:

- ``distinctive`` (the headline): personas by lift, the customer's share of the persona over
  the whole half's share, so a customer is described by what sets it apart (as an LLM reading
  its basket does) rather than by what everybody buys; a seed needs at least
  ``MIN_SUPPORT`` of the customer's products naming it.
- ``most_named``: the personas named most often (raw counts). On this catalogue three
  personas dominate the product labels, so most customers get the same set in both halves:
  "unchanged" then measures a degenerate representation, not a stable one. The number of
  distinct dominant sets and the share of the most common set are reported for both.

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
# A persona named by a single product of the half is noise, not a trait of the customer.
MIN_SUPPORT = 2
REPRESENTATIONS = ("distinctive", "most_named")
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


def lift(scores: DataFrame) -> DataFrame:
    """(customer_id, persona, score): the customer's share of the persona divided by the
    persona's share of all the scores (1 = as much as the average customer)."""
    per_customer = Window.partitionBy("customer_id")
    overall = scores.groupBy("persona").agg(F.sum("score").alias("persona_total")) \
        .withColumn("persona_share", F.col("persona_total") / F.sum("persona_total").over(Window.partitionBy()))
    shares = scores.where(F.col("score") > 0) \
        .withColumn("share", F.col("score") / F.sum("score").over(per_customer))
    # One row per persona in ``overall``: broadcast, the customers' side stays partitioned.
    return shares.join(F.broadcast(overall.select("persona", "persona_share")), "persona") \
        .select("customer_id", "persona", (F.col("share") / F.col("persona_share")).alias("score"))


def half_personas(spark: SparkSession, config: AppConfig, events: DataFrame, item_labels: DataFrame,
                  representation: str = "distinctive") -> DataFrame:
    """(customer_id, persona, score): the half's walk affinity from product-label seeds, as
    lift over the half's average for ``distinctive``, raw for ``most_named``."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
    pairs = events.select("customer_id", "product_id").distinct()
    counts = pairs.join(item_labels, "product_id").groupBy("customer_id", "persona").agg(
        F.count(F.lit(1)).cast("double").alias("score"))
    if representation == "distinctive":
        supported = counts.where(F.col("score") >= MIN_SUPPORT)
        ranked = lift(counts).join(supported.select("customer_id", "persona"), ["customer_id", "persona"], "left_semi")
    else:
        ranked = counts
    seeds = metrics.top_k(ranked, DOMINANT, "customer_id", "persona").select("customer_id", "persona")
    graph = build_graph(edges_from_pairs(pairs))
    affinity = propagate(spark, graph, seeds, config.propagation).customer_affinity.localCheckpoint(eager=True)
    graph.unpersist()
    return lift(affinity) if representation == "distinctive" else affinity


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


def set_diversity(dominant_sets: DataFrame) -> dict:
    """Distinct dominant sets and the share of customers holding the most common one."""
    sizes = dominant_sets.groupBy("dominant").count()
    row = sizes.agg(F.count(F.lit(1)).alias("distinct"), F.max("count").alias("largest"),
                    F.sum("count").alias("customers")).first()
    return {"distinct_sets": int(row["distinct"]), "most_common_set_share": row["largest"] / row["customers"]}


def evaluate_stability(spark: SparkSession, config: AppConfig) -> dict:
    started = time.monotonic()
    cfg = config.evaluation
    events_ref = storage.resolve_tables(config).paper_purchase_events
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
    k = min(cfg.stability_clusters, max(2, customer_count - 1))

    rfm_halves, silhouettes = [], {name: [] for name in ("rfm", *REPRESENTATIONS)}
    dominant_halves = {name: [] for name in REPRESENTATIONS}
    for half, as_of in ((first, middle), (second, end)):
        rfm = rfm_deciles(half, customers, as_of).localCheckpoint(eager=True)
        rfm_halves.append(rfm.select("customer_id", "r", "f", "m"))
        silhouettes["rfm"].append(silhouette(rfm, ["recency", "frequency", "monetary"], k))
        for name in REPRESENTATIONS:
            affinity = half_personas(spark, config, half, item_labels, name)
            dominant_halves[name].append(dominant(affinity, customers).localCheckpoint(eager=True))
            shares = accuracy.persona_features(
                customers, persona_names, _products(half), affinity, None) \
                .groupBy("customer_id").pivot("persona", persona_names).agg(F.first("walk_share")).fillna(0.0) \
                .toDF("customer_id", *share_columns)  # plain names: persona names hold blanks and dashes
            silhouettes[name].append(silhouette(shares, share_columns, k))

    a, b = rfm_halves
    unchanged_rfm = a.alias("a").join(b.alias("b"), "customer_id").agg(F.avg(
        ((F.col("a.r") == F.col("b.r")) & (F.col("a.f") == F.col("b.f")) & (F.col("a.m") == F.col("b.m")))
        .cast("double"))).first()[0]
    result = {
        "customers": customer_count, "min_invoices": cfg.stability_min_invoices,
        "unchanged_rfm": float(unchanged_rfm), "silhouette_rfm": sum(silhouettes["rfm"]) / 2,
        "paper_unchanged_rfm": 0.013, "paper_unchanged_personas": 0.18,
    }
    for name in REPRESENTATIONS:
        a, b = dominant_halves[name]
        unchanged = a.alias("a").join(b.alias("b"), "customer_id") \
            .agg(F.avg((F.col("a.dominant") == F.col("b.dominant")).cast("double"))).first()[0]
        suffix = "" if name == "distinctive" else f"_{name}"
        diversity = set_diversity(a)
        result |= {
            f"unchanged_personas{suffix}": float(unchanged),
            f"silhouette_personas{suffix}": sum(silhouettes[name]) / 2,
            f"distinct_sets{suffix}": diversity["distinct_sets"],
            f"most_common_set_share{suffix}": diversity["most_common_set_share"],
        }
    return result | {"seconds": round(time.monotonic() - started, 1)}


def format_table(result: dict) -> str:
    lines = [
        f"customers with > {result['min_invoices']} invoices: {result['customers']}",
        f"{'representation':<26}{'unchanged':>10}{'paper':>8}{'silhouette':>12}{'distinct sets':>15}"
        f"{'largest set':>13}",
        f"{'RFM deciles':<26}{result['unchanged_rfm']:>10.3f}{result['paper_unchanged_rfm']:>8.3f}"
        f"{result['silhouette_rfm']:>12.3f}",
    ]
    for label, suffix in (("dominant 3, distinctive", ""), ("dominant 3, most named", "_most_named")):
        lines.append(
            f"{label:<26}{result['unchanged_personas' + suffix]:>10.3f}{result['paper_unchanged_personas']:>8.3f}"
            f"{result['silhouette_personas' + suffix]:>12.3f}{result['distinct_sets' + suffix]:>15d}"
            f"{result['most_common_set_share' + suffix]:>13.3f}")
    return "\n".join(lines)


def _products(events: DataFrame) -> DataFrame:
    return events.groupBy("customer_id").agg(F.countDistinct("product_id").alias("products"))
