"""The bipartite customer-product purchase graph, in GraphFrames' column conventions.

One edge per distinct (customer, product) pair. The paper's model is unweighted (weight 1.0);
optional weights are the purchase count or a recency decay with a half-life. Whatever the
weights, the walk's transitions are ``w / (sum of w at the node the walk arrives from)``, so
every transition matrix stays row-stochastic and RevAff's bound holds unchanged.

Vertices carry a ``long`` id (GraphFrames' ``id``), edges ``src`` (customer) and ``dst``
(product): joins and shuffles on longs are cheaper than on the string keys, and degrees and
weight sums are computed here once and reused by every superstep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_lib.config import EDGE_WEIGHTINGS as WEIGHTINGS
from persona_lib.errors import InputError

CUSTOMER = "customer"
PRODUCT = "product"
SECONDS_PER_DAY = 86400.0


def edges_from_events(events: DataFrame, weighting: str = "none", half_life_days: float = 90.0,
                      as_of=None) -> DataFrame:
    """(customer_id, product_id, weight): one row per distinct pair of ``purchase_events``.

    ``weighting``: "none" (1.0, the paper's model), "count" (the pair's invoice lines) or
    "recency" (sum over the pair's lines of 0.5 ** (age in days / half_life_days), age taken
    at ``as_of``, default the latest event_ts in ``events``).
    """
    if weighting not in WEIGHTINGS:
        raise InputError(f"graph.edge_weighting: {weighting!r} is not one of {list(WEIGHTINGS)}")
    missing = [c for c in ("customer_id", "product_id") if c not in events.columns]
    if missing:
        raise InputError(f"purchase events: missing column(s) {missing}")
    pairs = events.groupBy("customer_id", "product_id")
    if weighting == "none":
        return pairs.agg(F.lit(1.0).alias("weight"))
    if weighting == "count":
        return pairs.agg(F.count(F.lit(1)).cast("double").alias("weight"))
    if half_life_days <= 0:
        raise InputError(f"graph.half_life_days must be > 0, got {half_life_days}")
    if "event_ts" not in events.columns:
        raise InputError("purchase events: recency weighting needs the event_ts column")
    if as_of is None:
        as_of = events.agg(F.max("event_ts")).first()[0]
    reference = F.lit(as_of).cast("timestamp")
    age_days = (F.unix_timestamp(reference) - F.unix_timestamp("event_ts")) / SECONDS_PER_DAY
    return pairs.agg(F.sum(F.pow(F.lit(0.5), age_days / F.lit(half_life_days))).alias("weight"))


# A group vertex's key: kept apart from product ids, which could spell the same text.
GROUP_KEY_PREFIX = "group:"


def product_graph_keys(products: DataFrame, product_key: str) -> Optional[DataFrame]:
    """(product_id, graph_key): the product vertex each product of ``products`` (the products
    table) joins under ``graph.product_key``; None for "product", where every product is its
    own vertex. A product without a group keeps its own id."""
    if product_key == "product":
        return None
    if product_key != "group":
        raise InputError(f"graph.product_key: {product_key!r} is not one of ['product', 'group']")
    if "product_group" not in products.columns:
        raise InputError("graph.product_key group: the products table has no product_group column "
                         "(map ingest.products.columns.group and ingest again)")
    group = F.col("product_group")
    return products.select(
        "product_id",
        F.when(group.isNotNull(), F.concat(F.lit(GROUP_KEY_PREFIX), group)).otherwise(F.col("product_id"))
        .alias("graph_key"))


def edges_by_key(edges: DataFrame, graph_keys: DataFrame, weighting: str = "none") -> DataFrame:
    """``edges`` (customer_id, product_id, weight) on the coarser product vertices of
    ``graph_keys``: one edge per (customer, key), its product_id the key. Unweighted stays
    unweighted (1.0); a count or recency weight is summed over the group's products."""
    keyed = edges.join(graph_keys, "product_id", "left").select(
        "customer_id", F.coalesce("graph_key", "product_id").alias("product_id"), "weight")
    weight = F.max("weight") if weighting == "none" else F.sum("weight")
    return keyed.groupBy("customer_id", "product_id").agg(weight.alias("weight"))


def affinity_by_product(key_affinity: DataFrame, graph_keys: DataFrame) -> DataFrame:
    """A walk's product_affinity over keyed vertices, back per product: every product takes
    its vertex's (product_id, persona, score) rows."""
    return (graph_keys.join(key_affinity.withColumnRenamed("product_id", "graph_key"), "graph_key")
            .select("product_id", "persona", "score"))


def edges_from_pairs(pairs: DataFrame) -> DataFrame:
    """(customer_id, product_id, weight=1.0) from (customer_id, product_id) rows, duplicates merged."""
    return edges_from_events(pairs.select("customer_id", "product_id"), weighting="none")


@dataclass(frozen=True)
class PurchaseGraph:
    """The graph, built once and cached.

    vertices: id (long), key (customer_id or product_id), kind ("customer" | "product"),
              degree (edges), weight_sum (sum of edge weights; = degree when unweighted).
    edges:    src (customer id), dst (product id), weight, to_product (w / weight_sum of dst),
              to_customer (w / weight_sum of src), hash-partitioned by src.
    A push from a customer to a product multiplies by ``to_product`` (the walk arriving at the
    product chose this edge among the product's), and from a product to a customer by
    ``to_customer``: "divide by the receiving node's degree", weighted.
    """

    vertices: DataFrame
    edges: DataFrame
    partitions: int
    edge_count: int
    customer_count: int
    product_count: int

    def customers(self) -> DataFrame:
        return self.vertices.where(F.col("kind") == CUSTOMER)

    def products(self) -> DataFrame:
        return self.vertices.where(F.col("kind") == PRODUCT)

    def to_graphframe(self):
        """A ``graphframes.GraphFrame`` (needs the GraphFrames JVM library on the session)."""
        from persona_lib.errors import DependencyError

        try:
            from graphframes import GraphFrame

            return GraphFrame(self.vertices, self.edges)
        except Exception as exc:  # noqa: BLE001 - py4j raises plain errors for a missing class
            raise DependencyError(
                f"GraphFrames JVM library not available ({type(exc).__name__}); "
                "see persona_lib.jars.has_graphframes") from exc

    def unpersist(self) -> None:
        self.edges.unpersist()
        self.vertices.unpersist()


# Up to this many vertices of a kind (customers or products) are broadcast to the join that
# gives each edge its vertex ids: about 40 bytes a vertex, 80 MB at the default.
BROADCAST_VERTICES = 2_000_000


def build_graph(edges: DataFrame, partitions: Optional[int] = None,
                broadcast_vertices: int = BROADCAST_VERTICES) -> PurchaseGraph:
    """The cached PurchaseGraph of (customer_id, product_id, weight) edges.

    Edges are hash-partitioned by the customer id and cached: every superstep joins its
    frontier with them, and a frontier that is itself partitioned by customer id then joins
    and aggregates without a shuffle of the edges. Vertex ids are assigned once and the
    vertex table is checkpointed (``monotonically_increasing_id`` is only stable for a fixed
    input, and the distinct before it is a shuffle).

    Each side of vertices (customers, products) with at most ``broadcast_vertices`` rows is
    broadcast to the edge join, so the edges are shuffled only by src; a larger side is left to
    the planner (a shuffle join past Spark's broadcast threshold). At 13.3M pairs (206k
    customers, 50k products): 14.4 s against 16.0 s without the hints (bench/graph_build.py,
    medians of 3 in one session; 0.88-0.90 in three such runs).
    """
    spark = edges.sparkSession
    partitions = partitions or int(spark.conf.get("spark.sql.shuffle.partitions"))
    keyed = edges.select(F.col("customer_id").cast("string"), F.col("product_id").cast("string"),
                         F.col("weight").cast("double"))
    # Read once: the check, both degree sides and the edge join would each evaluate ``edges``
    # (a scan and shuffle of purchase_events). Edges the caller persisted already are read
    # from its cache (the casts are no-ops on typed columns), not copied into a second one.
    owned_cache = edges.storageLevel == StorageLevel.NONE
    if owned_cache:
        keyed = keyed.persist(StorageLevel.MEMORY_AND_DISK)
    is_bad = (F.col("weight").isNull() | (F.col("weight") <= 0) | F.col("customer_id").isNull()
              | F.col("product_id").isNull())
    # One pass that also fills the cache; limit(1) alone would run a widening series of jobs,
    # each re-evaluating the input until the partitions it scanned were cached.
    bad = keyed.where(is_bad).limit(1).collect() if keyed.where(is_bad).count() else []
    if bad:
        if owned_cache:
            keyed.unpersist()
        raise InputError(f"graph edges: every edge needs a customer_id, a product_id and a weight > 0; "
                         f"first bad row: {bad[0].asDict()}")
    customer_side = keyed.groupBy(F.col("customer_id").alias("key")).agg(
        F.count(F.lit(1)).alias("degree"), F.sum("weight").alias("weight_sum")
    ).withColumn("kind", F.lit(CUSTOMER))
    product_side = keyed.groupBy(F.col("product_id").alias("key")).agg(
        F.count(F.lit(1)).alias("degree"), F.sum("weight").alias("weight_sum")
    ).withColumn("kind", F.lit(PRODUCT))
    vertices = (
        customer_side.unionByName(product_side)
        .select(F.monotonically_increasing_id().alias("id"), "key", "kind", "degree", "weight_sum")
        .localCheckpoint(eager=True)
    )
    counts = {row["kind"]: row["count"] for row in vertices.groupBy("kind").count().collect()}
    customers = vertices.where(F.col("kind") == CUSTOMER).select(
        F.col("id").alias("src"), F.col("key").alias("customer_id"), F.col("weight_sum").alias("src_weight"))
    products = vertices.where(F.col("kind") == PRODUCT).select(
        F.col("id").alias("dst"), F.col("key").alias("product_id"), F.col("weight_sum").alias("dst_weight"))
    if counts.get(CUSTOMER, 0) <= broadcast_vertices:
        customers = F.broadcast(customers)
    if counts.get(PRODUCT, 0) <= broadcast_vertices:
        products = F.broadcast(products)
    graph_edges = (
        keyed.join(customers, "customer_id").join(products, "product_id")
        .select("src", "dst", "weight",
                (F.col("weight") / F.col("dst_weight")).alias("to_product"),
                (F.col("weight") / F.col("src_weight")).alias("to_customer"))
        .repartition(partitions, "src")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    edge_count = graph_edges.count()
    if owned_cache:
        keyed.unpersist()
    return PurchaseGraph(
        vertices=vertices, edges=graph_edges, partitions=partitions, edge_count=edge_count,
        customer_count=counts.get(CUSTOMER, 0), product_count=counts.get(PRODUCT, 0),
    )
