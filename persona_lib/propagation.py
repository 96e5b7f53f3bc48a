"""Error-bounded persona propagation: RevAff as synchronous supersteps, and an exact reference.

See ``RevAffPropagation`` for the model, the bound and the supersteps; ``propagate`` is the
entry point the pipeline calls, ``write_propagation`` writes the Delta outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType, StructField, StructType

from persona_lib import contracts, storage
from persona_lib.config import PROPAGATION_METHODS as METHODS
from persona_lib.config import AppConfig, PropagationConfig
from persona_lib.errors import InputError
from persona_lib.graph import CUSTOMER, PRODUCT, PurchaseGraph

log = logging.getLogger("personas.propagation")

MISSING_LABEL_POLICIES = ("skip", "error")
CHECKPOINT_STORAGES = ("local", "reliable")
SEEDS_SCHEMA = StructType([
    StructField("customer_id", StringType(), False),
    StructField("persona", StringType(), False),
    StructField("mass", DoubleType(), False),
])
# One sparse entry of a layer: vertex id, persona index, value (estimate = residual received).
LAYER_SCHEMA = StructType([
    StructField("id", LongType(), False),
    StructField("persona", IntegerType(), False),
    StructField("value", DoubleType(), False),
])

SuperstepCallback = Callable[[int, int, float], None]


def seeds_from_labels(labels: DataFrame, beta: float) -> DataFrame:
    """L as rows: (customer_id, persona, mass) from (customer_id, persona) label rows.

    mass = c_m / (number of personas of the customer), c_m = (min_n Qhat(n) / Qhat(m)) ** beta,
    Qhat(m) = share of persona m among all labels; the minimum runs over the personas that
    occur, so a persona nobody has gets no seed (and no score). Duplicate rows count once.
    """
    distinct_labels = labels.select(F.col("customer_id").cast("string"), F.col("persona").cast("string")) \
        .where(F.col("customer_id").isNotNull() & F.col("persona").isNotNull()).dropDuplicates()
    # Per-persona counts: one row per persona, so collecting them is cheap at any scale.
    persona_counts = {row["persona"]: row["count"] for row in distinct_labels.groupBy("persona").count().collect()}
    if not persona_counts:
        return distinct_labels.sparkSession.createDataFrame([], SEEDS_SCHEMA)
    total = float(sum(persona_counts.values()))
    min_share = min(persona_counts.values()) / total
    debias = {name: (min_share / (count / total)) ** beta for name, count in persona_counts.items()}
    debias_of = F.create_map(*[lit for name, c in debias.items() for lit in (F.lit(name), F.lit(c))])
    per_customer = distinct_labels.groupBy("customer_id").agg(F.count(F.lit(1)).alias("labels_of_customer"))
    return (
        distinct_labels.join(per_customer, "customer_id")
        .select("customer_id", "persona",
                (debias_of[F.col("persona")] / F.col("labels_of_customer")).alias("mass"))
    )


def default_epsilon(total_seed_mass: float, customers: int, personas: int, relative: float) -> float:
    """The default absolute error bound: ``relative`` x the mean affinity of a (customer, persona).

    Psi = Pi L with Pi row-stochastic, so the affinity mass the customers share is about the
    seed mass: the mean of Psi over all customers and personas is about
    total_seed_mass / (customers x personas) (exactly so when the walk's stationary
    distribution is uniform). An absolute epsilon is only meaningful against that scale: the
    largest affinities of unlabelled customers are a few times the mean, so epsilon = 0.02 is
    coarse on a 206k-customer graph with 51 personas and fine on a 4k-customer one. Tying
    epsilon to the mean keeps the ranking quality the same across graph sizes (measured in
    bench/propagation.py: top-5 agreement with the exact answer).
    """
    if customers <= 0 or personas <= 0 or total_seed_mass <= 0:
        return 0.0
    return relative * total_seed_mass / (customers * personas)


@dataclass
class PropagationResult:
    customer_affinity: DataFrame  # customer_id, persona, score
    product_affinity: DataFrame   # product_id, persona, score
    stats: dict = field(default_factory=dict)


class RevAffPropagation:
    """Persona affinities by a fixed-length customer-product-customer walk, within epsilon.

    Model (Shi et al., "You Are What You Bought", SIGIR 2025, arXiv 2504.17304, Sec. 4):
    P is the customer->product transition (w_uv / W_u), P' the product->customer one
    (w_vw / W_v), W the weight sum of a node (its degree when unweighted, the paper's case),
    L the seed matrix (``seeds_from_labels``). The affinity is

        Psi = (1 / lhat) * sum_{l=1..lhat} (P P')^l L        (no restart: not PageRank)

    Supersteps. Layer 0 holds L as sparse (vertex, persona, value) entries on the labelled
    customers; layers alternate customers (even) and products (odd). Superstep t + 1 sends,
    for every entry of layer t at or above the threshold theta, ``value * w / W_receiver``
    along each edge of the vertex (the reverse push of the paper's Algorithm 2, all frontier
    entries at once instead of a max-heap), and layer t + 1 is the per-(vertex, persona) sum
    of the messages, which is both that layer's estimate and its residual. Entries below
    theta are never sent, so messages stay sparse and shrink. It stops after layer 2 * lhat,
    when no entry is at or above theta, or at ``max_supersteps`` (then ``converged`` is
    False). Psi_hat = (1 / lhat) * sum of the even layers 2, 4, ..., 2 * lhat; the product
    affinity P' L is layer 1.

    Bound (the paper's Theorem 3, restated for the frontier form): with theta = epsilon /
    (2 * lhat), |Psi_hat[u, m] - Psi[u, m]| <= epsilon for every customer u and persona m.
    Each push operator is row-stochastic (weights or not), so mass left behind at one layer,
    each entry < theta, loses at most theta at every later layer; layer 2l misses at most
    2l * theta and the average over l at most (lhat + 1) * theta <= epsilon. Only the order
    of the pushes differs from the paper, and the proof does not use it.

    Method "exact" is the same supersteps with threshold 0: 2 * lhat synchronous message
    passes over every edge carrying every non-zero entry (the reference on Spark).

    Engineering: edges are hash-partitioned by customer id (``build_graph``), so a customer
    layer joins them without a shuffle; a product layer is at most products x personas
    entries (about 20 MB at 50k products and 51 personas, the paper's largest graph) and is
    broadcast (``broadcast_product_layer``), so the customer layer it produces is summed in
    place, where the edges already live, by a vectorised kernel instead of |E| x personas
    message rows. Every ``checkpoint_interval`` layers a layer is checkpointed (local or
    reliable, config) so lineage does not grow with lhat; other layers are persisted because
    each is read twice (as the next frontier and as an estimate). Besides that broadcast
    product layer, only per-persona and per-superstep scalars reach the driver.
    """

    def __init__(self, spark: SparkSession, graph: PurchaseGraph, config: PropagationConfig):
        _validate(config)
        self.spark = spark
        self.graph = graph
        self.config = config
        self._broadcasts: list = []  # product layers shared with the executors in this run

    def run(self, labels: DataFrame, method: Optional[str] = None, epsilon: Optional[float] = None,
            on_superstep: Optional[SuperstepCallback] = None) -> PropagationResult:
        cfg = self.config
        method = method or cfg.method
        if method not in METHODS:
            raise InputError(f"propagation method {method!r} is not one of {list(METHODS)}")
        in_graph_labels, skipped_customers = self._labels_in_graph(labels)
        seeds = seeds_from_labels(in_graph_labels, cfg.beta)
        # One pass for the per-run scalars; the persona set is small (taxonomy-sized).
        mass_row = seeds.agg(F.sum("mass").alias("mass"), F.countDistinct("customer_id").alias("seeded"),
                             F.collect_set("persona").alias("personas")).first()
        persona_names = sorted(mass_row["personas"] or [])
        total_mass = float(mass_row["mass"] or 0.0)
        if epsilon is None:
            epsilon = cfg.epsilon
        if epsilon is None:
            epsilon = default_epsilon(total_mass, self.graph.customer_count, len(persona_names), cfg.epsilon_relative)
        if epsilon < 0:
            raise InputError(f"propagation.epsilon must be >= 0, got {epsilon}")
        lhat = cfg.lhat
        theta = 0.0 if method == "exact" else epsilon / (2 * lhat)
        stats = {
            "method": method, "epsilon": 0.0 if method == "exact" else float(epsilon), "lhat": lhat,
            "beta": cfg.beta, "theta": theta, "seeds": int(mass_row["seeded"] or 0),
            "skipped_labels": skipped_customers, "personas": len(persona_names),
            "edges": self.graph.edge_count, "supersteps": 0, "messages": [], "max_residual": 0.0,
            "converged": True,
        }
        layers = self._supersteps(self._seed_layer(seeds, persona_names), theta, stats, on_superstep)
        customer_layers = [layers[t] for t in range(2, len(layers), 2)]
        customer_affinity = self._named(self._average(customer_layers, lhat), CUSTOMER, persona_names)
        product_layer = layers[1] if len(layers) > 1 else self._empty_layer()
        product_affinity = self._named(product_layer, PRODUCT, persona_names)
        # The outputs are materialised, then the layers are released: the outputs must not
        # recompute the supersteps lazily after their inputs are gone.
        customer_affinity = customer_affinity.localCheckpoint(eager=True)
        product_affinity = product_affinity.localCheckpoint(eager=True)
        for layer in layers:
            layer.unpersist()
        for shared in self._broadcasts:
            shared.destroy()
        self._broadcasts.clear()
        return PropagationResult(customer_affinity, product_affinity, stats)

    # -- supersteps -------------------------------------------------------------------------

    def _supersteps(self, layer0: DataFrame, theta: float, stats: dict,
                    on_superstep: Optional[SuperstepCallback]) -> list[DataFrame]:
        cfg = self.config
        layers = [self._materialise(layer0, 0)]
        pushable, messages, left_behind = self._layer_figures(layers[0], theta)
        largest_left = left_behind
        for step in range(1, 2 * cfg.lhat + 1):
            if pushable == 0:
                break
            if step > cfg.max_supersteps:
                stats["converged"] = False
                largest_left = max(largest_left, self._largest(layers[-1]))
                log.warning("propagation stopped at max_supersteps=%d before layer %d",
                            cfg.max_supersteps, 2 * cfg.lhat)
                break
            frontier = layers[-1].where(_at_or_above(theta))
            sending = CUSTOMER if (step - 1) % 2 == 0 else PRODUCT
            layers.append(self._materialise(self._push(frontier, sending), step))
            stats["messages"].append(messages)
            stats["supersteps"] = step
            if step < 2 * cfg.lhat:
                pushable, messages, left_behind = self._layer_figures(layers[-1], theta)
                largest_left = max(largest_left, left_behind)
            if on_superstep is not None:
                on_superstep(step, stats["messages"][-1], largest_left)
        stats["max_residual"] = float(largest_left)
        return layers

    def _push(self, frontier: DataFrame, sending: str) -> DataFrame:
        """One aggregateMessages round: frontier x edges -> per (receiver, persona) sums."""
        edges = self.graph.edges
        if sending == CUSTOMER:
            # Frontier and edges are both hash-partitioned by the customer id: no edge shuffle;
            # the product sums are pre-aggregated per partition before their shuffle.
            joined = frontier.join(edges, frontier["id"] == edges["src"])
            messages = joined.select(F.col("dst").alias("id"), "persona",
                                     (F.col("value") * F.col("to_product")).alias("value"))
        elif self.config.broadcast_product_layer:
            return self._push_broadcast_products(frontier)
        else:
            joined = edges.join(frontier, frontier["id"] == edges["dst"])
            messages = joined.select(F.col("src").alias("id"), "persona",
                                     (F.col("value") * F.col("to_customer")).alias("value"))
        return messages.groupBy("id", "persona").agg(F.sum("value").alias("value"))

    def _push_broadcast_products(self, frontier: DataFrame) -> DataFrame:
        """The product -> customer round with the product layer broadcast as a matrix.

        A product layer is at most products x personas entries (about 20 MB at 50k products
        and 51 personas, the paper's largest graph) while this round touches every edge of
        every product in the frontier: near-dense, |E| x personas messages if exploded. So
        the layer is broadcast as a (products x personas) matrix and each partition of the
        edges (hash-partitioned by customer) forms its customers' sums with one vectorised
        gather-and-segment-sum per Arrow batch; the per-batch partial sums of a customer are
        combined by a groupBy that needs no shuffle (the partitioning is by customer already).
        Same arithmetic as the message form; the test suite checks both against scipy.
        """
        layer = frontier.toPandas()  # <= products x personas rows, by construction
        persona_count = int(layer["persona"].max()) + 1 if len(layer) else 1
        product_ids, position = np.unique(layer["id"].to_numpy(dtype=np.int64), return_inverse=True)
        matrix = np.zeros((len(product_ids), persona_count))
        matrix[position, layer["persona"].to_numpy(dtype=np.int64)] = layer["value"].to_numpy(dtype=float)
        shared = self.spark.sparkContext.broadcast((product_ids, matrix))
        self._broadcasts.append(shared)

        def customer_sums(batches):
            ids, values = shared.value
            for batch in batches:
                yield _segment_sums(batch, ids, values)

        sums = self.graph.edges.select("src", "dst", "to_customer").mapInPandas(customer_sums, LAYER_SCHEMA)
        return sums.groupBy("id", "persona").agg(F.sum("value").alias("value"))

    def _materialise(self, layer: DataFrame, index: int) -> DataFrame:
        cfg = self.config
        if cfg.checkpoint_interval > 0 and index > 0 and index % cfg.checkpoint_interval == 0:
            # Cuts the lineage: a later layer's plan starts here, not at the seeds.
            return (layer.localCheckpoint(eager=True) if cfg.checkpoint_storage == "local"
                    else layer.checkpoint(eager=True))
        return layer.persist(StorageLevel.MEMORY_AND_DISK)

    def _layer_figures(self, layer: DataFrame, theta: float) -> tuple[int, int, float]:
        """(entries to push, messages they send = sum of their degrees, largest entry left)."""
        degrees = self.graph.vertices.select("id", "degree")
        pushes = _at_or_above(theta)
        row = layer.join(degrees, "id").agg(
            F.count(F.when(pushes, 1)).alias("pushable"),
            F.sum(F.when(pushes, F.col("degree"))).alias("messages"),
            F.max(F.when(~pushes, F.col("value"))).alias("left"),
        ).first()
        return int(row["pushable"]), int(row["messages"] or 0), float(row["left"] or 0.0)

    @staticmethod
    def _largest(layer: DataFrame) -> float:
        return float(layer.agg(F.max("value")).first()[0] or 0.0)

    # -- seeds and outputs ------------------------------------------------------------------

    def _labels_in_graph(self, labels: DataFrame) -> tuple[DataFrame, int]:
        labels = labels.select(F.col("customer_id").cast("string"), F.col("persona").cast("string"))
        customers = self.graph.customers().select(F.col("key").alias("customer_id"))
        missing = labels.join(customers, "customer_id", "left_anti").select("customer_id").distinct()
        missing_count = missing.count()
        if missing_count and self.config.missing_label_policy == "error":
            examples = [r["customer_id"] for r in missing.limit(5).collect()]
            raise InputError(
                f"labels: {missing_count} labelled customer(s) are not in the purchase graph, e.g. "
                f"customer_id {examples}; set propagation.missing_label_policy: skip to drop them")
        if missing_count:
            log.warning("labels: skipped %d labelled customer(s) not in the purchase graph", missing_count)
        return labels.join(customers, "customer_id", "left_semi"), missing_count

    def _seed_layer(self, seeds: DataFrame, persona_names: list[str]) -> DataFrame:
        if not persona_names:
            return self._empty_layer()
        index_of = F.create_map(*[lit for i, n in enumerate(persona_names) for lit in (F.lit(n), F.lit(i))])
        customers = self.graph.customers().select("id", F.col("key").alias("customer_id"))
        return (
            seeds.join(customers, "customer_id")
            .select("id", index_of[F.col("persona")].cast("int").alias("persona"), "mass")
            .withColumnRenamed("mass", "value")
            .repartition(self.graph.partitions, "id")  # co-partitioned with the edges' src
        )

    def _average(self, customer_layers: list[DataFrame], lhat: int) -> DataFrame:
        if not customer_layers:
            return self._empty_layer()
        union = customer_layers[0]
        for layer in customer_layers[1:]:
            union = union.unionByName(layer)
        return union.groupBy("id", "persona").agg((F.sum("value") / F.lit(float(lhat))).alias("value"))

    def _named(self, layer: DataFrame, kind: str, persona_names: list[str]) -> DataFrame:
        key = "customer_id" if kind == CUSTOMER else "product_id"
        vertices = self.graph.vertices.where(F.col("kind") == kind).select("id", F.col("key").alias(key))
        names = F.array(*[F.lit(n) for n in persona_names]) if persona_names else F.array().cast("array<string>")
        return layer.join(vertices, "id").select(
            key, F.element_at(names, F.col("persona") + 1).alias("persona"), F.col("value").alias("score"))

    def _empty_layer(self) -> DataFrame:
        return self.spark.createDataFrame([], LAYER_SCHEMA)


def propagate(spark: SparkSession, graph: PurchaseGraph, labels: DataFrame,
              config: PropagationConfig | AppConfig, method: Optional[str] = None,
              epsilon: Optional[float] = None, on_superstep: Optional[SuperstepCallback] = None
              ) -> PropagationResult:
    """Affinities of every customer and product to every labelled persona (see RevAffPropagation).

    ``labels``: (customer_id, persona), one row per label. ``method``/``epsilon`` override
    the config; epsilon None and config epsilon null -> ``default_epsilon``.
    """
    propagation_config = config.propagation if isinstance(config, AppConfig) else config
    return RevAffPropagation(spark, graph, propagation_config).run(labels, method, epsilon, on_superstep)


def write_propagation(spark: SparkSession, config: AppConfig, result: PropagationResult,
                      propagation_id: str) -> dict:
    """customer_affinity and product_affinity (overwrite), propagation_runs (append)."""
    customer_ref = storage.table_ref(config, "customer_affinity")
    product_ref = storage.table_ref(config, "product_affinity")
    runs_ref = storage.table_ref(config, "propagation_runs")
    storage.overwrite(result.customer_affinity, customer_ref, contracts.CUSTOMER_AFFINITY)
    storage.overwrite(result.product_affinity, product_ref, contracts.PRODUCT_AFFINITY)
    stats = result.stats
    run_row = {
        "propagation_id": propagation_id, "method": stats["method"], "epsilon": stats["epsilon"],
        "lhat": stats["lhat"], "beta": stats["beta"], "seeds": stats["seeds"], "edges": stats["edges"],
        "supersteps": stats["supersteps"], "messages": [int(m) for m in stats["messages"]],
        "max_residual": stats["max_residual"], "converged": stats["converged"],
        "computed_at": datetime.now(timezone.utc).replace(tzinfo=None),
    }
    storage.append(spark.createDataFrame([run_row], contracts.PROPAGATION_RUNS), runs_ref,
                   contracts.PROPAGATION_RUNS)
    return {ref.name: ref.summary(spark) for ref in (customer_ref, product_ref, runs_ref)}


def _segment_sums(edges: pd.DataFrame, product_ids: np.ndarray, product_layer: np.ndarray) -> pd.DataFrame:
    """(customer id, persona, sum over its edges of to_customer x product_layer[product]) of a batch."""
    dst = edges["dst"].to_numpy(dtype=np.int64)
    found = np.zeros(len(dst), dtype=bool)
    slot = np.zeros(len(dst), dtype=np.int64)
    if len(product_ids):
        slot = np.minimum(np.searchsorted(product_ids, dst), len(product_ids) - 1)
        found = product_ids[slot] == dst
    src = edges["src"].to_numpy(dtype=np.int64)[found]
    order = np.argsort(src, kind="stable")
    src = src[order]
    transition = edges["to_customer"].to_numpy(dtype=float)[found][order]
    weighted = product_layer[slot[found][order]] * transition[:, None]
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]]) if src.size else np.zeros(0, dtype=np.int64)
    sums = np.add.reduceat(weighted, starts, axis=0) if src.size else np.zeros((0, product_layer.shape[1]))
    rows, personas = np.nonzero(sums)
    return pd.DataFrame({"id": src[starts][rows], "persona": personas.astype(np.int32),
                         "value": sums[rows, personas]})


def _at_or_above(theta: float):
    # Exact (theta 0) sends every non-zero entry; RevAff only entries at or above theta.
    return (F.col("value") > 0) & (F.col("value") >= F.lit(theta))


def _validate(config: PropagationConfig) -> None:
    problems = []
    if config.lhat < 1:
        problems.append(f"lhat must be >= 1, got {config.lhat}")
    if config.method not in METHODS:
        problems.append(f"method must be one of {list(METHODS)}, got {config.method!r}")
    if config.missing_label_policy not in MISSING_LABEL_POLICIES:
        problems.append(f"missing_label_policy must be one of {list(MISSING_LABEL_POLICIES)}")
    if config.checkpoint_storage not in CHECKPOINT_STORAGES:
        problems.append(f"checkpoint_storage must be one of {list(CHECKPOINT_STORAGES)}")
    if config.max_supersteps < 1:
        problems.append("max_supersteps must be >= 1")
    if problems:
        raise InputError("propagation config: " + "; ".join(problems))
