"""Error-bounded persona propagation: RevAff as synchronous supersteps, along GraphFrames' lines.

Model (Shi et al., "You Are What You Bought", SIGIR 2025, arXiv 2504.17304, Sec. 4): P is
the customer->product transition (w_uv / W_u), P' the product->customer one (w_vw / W_v),
W the weight sum of a node (its degree when unweighted, the paper's case), L the seed
matrix (``seeds_from_labels``). The affinity is

    Psi = (1 / lhat) * sum_{l=1..lhat} (P P')^l L        (no restart: not PageRank)

Layer 0 holds L as sparse (id, persona, value) entries on the labelled customers; layers
alternate customers (even) and products (odd). Superstep t + 1 sends, for every entry of
layer t at or above the threshold theta (``push_threshold``), ``value * w / W_receiver``
along each edge of the vertex (the reverse push of the paper's Algorithm 2, all frontier
entries at once instead of a max-heap), and layer t + 1 is the per-(id, persona) sum of the
messages, which is both that layer's estimate and its residual. Psi_hat = (1 / lhat) * sum
of the even layers 2, 4, ..., 2 * lhat; the product affinity P' L is layer 1. Method
"exact" is the same supersteps with threshold 0 (the reference on Spark).

As in GraphFrames' AggregateMessages and Pregel, the parts are kept apart:

- seeding: ``labels_in_graph``, ``seeds_from_labels`` (L as rows), ``seed_layer`` (layer 0);
- the epsilon rule: ``default_epsilon`` (its scale), ``choose_epsilon`` (which one a run
  uses) and ``push_threshold`` (theta, with the proof of the bound);
- message and aggregation: ``push`` (one superstep over the edges in either direction,
  ``TO_DST`` or ``TO_SRC``) and ``broadcast_push`` (the same superstep with the sending layer
  broadcast as a matrix: the kernel for product layers);
- activity: ``at_or_above`` (which entries send) and ``layer_activity`` (what they send);
- loop policy: ``run_supersteps``, generic, returning the layers and a ``SuperstepTrace``.

``propagate`` wires them for RevAff; ``write_propagation`` writes the Delta outputs. Column
conventions are GraphFrames' (vertices ``id``, edges ``src`` = customer and ``dst`` =
product, messages aggregated per ``id``), so a GraphFrames engine could drive the same
superstep where its JVM library is on the session.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

import numpy as np
import pandas as pd
from pyspark import Broadcast, StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType, StructField, StructType

from persona_lib import contracts, storage
from persona_lib.config import PROPAGATION_METHODS as METHODS
from persona_lib.config import PropagationConfig
from persona_lib.errors import InputError
from persona_lib.graph import CUSTOMER, PRODUCT, PurchaseGraph
from persona_lib.storage import Tables

log = logging.getLogger("personas.propagation")

MISSING_LABEL_POLICIES = ("skip", "error")
CHECKPOINT_STORAGES = ("local", "reliable")
SEEDS_SCHEMA = StructType([
    StructField("customer_id", StringType(), False),
    StructField("persona", StringType(), False),
    StructField("mass", DoubleType(), False),
])
# GraphFrames' column names: a vertex's id, an edge's source (customer) and destination (product).
ID, SRC, DST = "id", "src", "dst"
# One sparse entry of a layer: vertex id, persona index, value (estimate = residual received).
LAYER_SCHEMA = StructType([
    StructField(ID, LongType(), False),
    StructField("persona", IntegerType(), False),
    StructField("value", DoubleType(), False),
])

SuperstepCallback = Callable[[int, int, float], None]


# -- seeding ------------------------------------------------------------------------------

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


def labels_in_graph(labels: DataFrame, graph: PurchaseGraph, missing_label_policy: str = "skip"
                    ) -> tuple[DataFrame, int]:
    """(the labels of customers in the graph, how many labelled customers are not in it).

    ``missing_label_policy`` "error" raises, naming some of the missing customers.
    """
    labels = labels.select(F.col("customer_id").cast("string"), F.col("persona").cast("string"))
    customers = graph.customers().select(F.col("key").alias("customer_id"))
    missing = labels.join(customers, "customer_id", "left_anti").select("customer_id").distinct()
    missing_count = missing.count()
    if missing_count and missing_label_policy == "error":
        examples = [r["customer_id"] for r in missing.limit(5).collect()]
        raise InputError(
            f"labels: {missing_count} labelled customer(s) are not in the purchase graph, e.g. "
            f"customer_id {examples}; set propagation.missing_label_policy: skip to drop them")
    if missing_count:
        log.warning("labels: skipped %d labelled customer(s) not in the purchase graph", missing_count)
    return labels.join(customers, "customer_id", "left_semi"), missing_count


def seed_layer(seeds: DataFrame, graph: PurchaseGraph, persona_names: list[str]) -> DataFrame:
    """Layer 0: the seed rows as (id, persona index into ``persona_names``, value)."""
    if not persona_names:
        return empty_layer(seeds.sparkSession)
    index_of = F.create_map(*[lit for i, n in enumerate(persona_names) for lit in (F.lit(n), F.lit(i))])
    customers = graph.customers().select(ID, F.col("key").alias("customer_id"))
    return (
        seeds.join(customers, "customer_id")
        .select(ID, index_of[F.col("persona")].cast("int").alias("persona"), F.col("mass").alias("value"))
        .repartition(graph.partitions, ID)  # co-partitioned with the edges' src
    )


# -- the epsilon rule ---------------------------------------------------------------------

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


def choose_epsilon(requested: Optional[float], configured: Optional[float], total_seed_mass: float,
                   customers: int, personas: int, relative: float) -> float:
    """A run's absolute bound: the caller's, else the config's, else ``default_epsilon``."""
    epsilon = requested if requested is not None else configured
    if epsilon is None:
        epsilon = default_epsilon(total_seed_mass, customers, personas, relative)
    if epsilon < 0:
        raise InputError(f"propagation.epsilon must be >= 0, got {epsilon}")
    return epsilon


def push_threshold(epsilon: float, lhat: int) -> float:
    """theta = epsilon / (2 * lhat): an entry below theta is never sent.

    Bound (the paper's Theorem 3, restated for the frontier form): with this theta,
    |Psi_hat[u, m] - Psi[u, m]| <= epsilon for every customer u and persona m. Each push
    operator is row-stochastic (weights or not), so mass left behind at one layer, each
    entry < theta, loses at most theta at every later layer; layer 2l misses at most
    2l * theta and the average over l at most (lhat + 1) * theta <= epsilon. Only the order
    of the pushes differs from the paper, and the proof does not use it. The proof needs
    only that every entry left behind is below theta, so it holds whichever layers the
    superstep loop runs and whatever the edge weights.
    """
    return epsilon / (2 * lhat)


# -- message and aggregation: one superstep over the edges ---------------------------------

@dataclass(frozen=True)
class Direction:
    """Which way a superstep crosses the edges (GraphFrames' sendToDst / sendToSrc)."""

    sender: str      # edge column with the sending vertex's id
    receiver: str    # edge column with the receiving vertex's id
    transition: str  # edge column the message value is multiplied by: w / W of the walk's end


# A customer layer sends to products, a product layer to customers (graph.PurchaseGraph).
TO_DST = Direction(sender=SRC, receiver=DST, transition="to_product")
TO_SRC = Direction(sender=DST, receiver=SRC, transition="to_customer")


def push(frontier: DataFrame, edges: DataFrame, direction: Direction) -> DataFrame:
    """One superstep over the edges: frontier (id, persona, value) -> (id, persona, value) sums.

    GraphFrames' aggregateMessages: every frontier entry sends ``value * transition`` along
    each edge of its vertex in ``direction``; the messages are summed per receiving ``id``
    and persona. From customers (``TO_DST``) the frontier and the edges are both
    hash-partitioned by the customer id, so the join needs no edge shuffle, and the product
    sums are pre-aggregated per partition before their shuffle.
    """
    joined = frontier.join(edges, frontier[ID] == edges[direction.sender])
    messages = joined.select(F.col(direction.receiver).alias(ID), "persona",
                             (F.col("value") * F.col(direction.transition)).alias("value"))
    return messages.groupBy(ID, "persona").agg(F.sum("value").alias("value"))


def broadcast_push(frontier: DataFrame, edges: DataFrame, direction: Direction = TO_SRC
                   ) -> tuple[DataFrame, Broadcast]:
    """``push`` with the frontier broadcast as a matrix; returns the sums and the broadcast.

    The kernel for the product -> customer superstep (``TO_SRC``). A product layer is at
    most products x personas entries (about 20 MB at 50k products and 51 personas, the
    paper's largest graph) while this superstep touches every edge of every product in the
    frontier: near-dense, |E| x personas messages if exploded. So the layer is broadcast as
    a (senders x personas) matrix and each partition of the edges (hash-partitioned by
    customer) forms its receivers' sums with one vectorised gather-and-segment-sum per Arrow
    batch; the per-batch partial sums of a customer are combined by a groupBy that needs no
    shuffle (the partitioning is by customer already). Same arithmetic as ``push``; the test
    suite checks both against scipy. The caller destroys the broadcast once the sums are
    materialised.
    """
    layer = frontier.toPandas()  # <= senders x personas rows, by construction
    persona_count = int(layer["persona"].max()) + 1 if len(layer) else 1
    sender_ids, position = np.unique(layer[ID].to_numpy(dtype=np.int64), return_inverse=True)
    matrix = np.zeros((len(sender_ids), persona_count))
    matrix[position, layer["persona"].to_numpy(dtype=np.int64)] = layer["value"].to_numpy(dtype=float)
    shared = frontier.sparkSession.sparkContext.broadcast((sender_ids, matrix))
    sender, receiver, transition = direction.sender, direction.receiver, direction.transition

    def receiver_sums(batches):
        ids, values = shared.value
        for batch in batches:
            yield segment_sums(batch[sender].to_numpy(dtype=np.int64), batch[receiver].to_numpy(dtype=np.int64),
                               batch[transition].to_numpy(dtype=float), ids, values)

    sums = edges.select(SRC, DST, transition).mapInPandas(receiver_sums, LAYER_SCHEMA)
    return sums.groupBy(ID, "persona").agg(F.sum("value").alias("value")), shared


def segment_sums(senders: np.ndarray, receivers: np.ndarray, transitions: np.ndarray,
                 sender_ids: np.ndarray, layer: np.ndarray) -> pd.DataFrame:
    """(receiver id, persona, sum over its edges of transition x layer[sender]) of one batch of edges."""
    found = np.zeros(len(senders), dtype=bool)
    slot = np.zeros(len(senders), dtype=np.int64)
    if len(sender_ids):
        slot = np.minimum(np.searchsorted(sender_ids, senders), len(sender_ids) - 1)
        found = sender_ids[slot] == senders
    receiver = receivers[found]
    order = np.argsort(receiver, kind="stable")
    receiver = receiver[order]
    transition = transitions[found][order]
    weighted = layer[slot[found][order]] * transition[:, None]
    starts = (np.flatnonzero(np.r_[True, receiver[1:] != receiver[:-1]]) if receiver.size
              else np.zeros(0, dtype=np.int64))
    sums = np.add.reduceat(weighted, starts, axis=0) if receiver.size else np.zeros((0, layer.shape[1]))
    rows, personas = np.nonzero(sums)
    return pd.DataFrame({ID: receiver[starts][rows], "persona": personas.astype(np.int32),
                         "value": sums[rows, personas]})


# -- activity -----------------------------------------------------------------------------

def at_or_above(theta: float) -> Column:
    """The entries of a layer that send: every non-zero one at threshold 0 (exact), else >= theta."""
    return (F.col("value") > 0) & (F.col("value") >= F.lit(theta))


@dataclass(frozen=True)
class LayerActivity:
    active: int         # entries that send in the next superstep
    messages: int       # messages they send: the sum of their vertices' degrees
    left_behind: float  # largest entry that does not send (0.0: none)


def layer_activity(layer: DataFrame, degrees: DataFrame, active: Column) -> LayerActivity:
    """What a layer sends: one aggregation over (layer x degrees); ``degrees``: (id, degree)."""
    row = layer.join(degrees, ID).agg(
        F.count(F.when(active, 1)).alias("active"),
        F.sum(F.when(active, F.col("degree"))).alias("messages"),
        F.max(F.when(~active, F.col("value"))).alias("left"),
    ).first()
    return LayerActivity(int(row["active"]), int(row["messages"] or 0), float(row["left"] or 0.0))


# -- loop policy --------------------------------------------------------------------------

@dataclass(frozen=True)
class SuperstepTrace:
    """What a superstep loop did."""

    supersteps: int
    messages: tuple[int, ...]     # messages sent in each superstep
    residuals: tuple[float, ...]  # after each superstep: the largest entry left behind so far
    max_residual: float           # the largest entry never sent, the cut-off layer's included
    converged: bool               # False: stopped by max_supersteps before the last layer


def run_supersteps(layer0: DataFrame, send: Callable[[DataFrame, int], DataFrame], active: Column,
                   degrees: DataFrame, last_layer: int, max_supersteps: int,
                   materialise: Callable[[DataFrame, int], DataFrame],
                   on_superstep: Optional[SuperstepCallback] = None) -> tuple[list[DataFrame], SuperstepTrace]:
    """Pregel's loop, apart from what a superstep does: (layers 0..n, the trace).

    Superstep t selects the ``active`` entries of layer t - 1 (the frontier), ``send(frontier,
    t)`` makes layer t from them, ``materialise(layer, t)`` persists or checkpoints it. The
    loop stops when no entry is active, after layer ``last_layer``, or when the next
    superstep would exceed ``max_supersteps``: then it is not converged and the whole last
    layer counts as left behind. ``on_superstep(t, messages, largest left behind so far)``
    is called after each superstep. Only per-superstep scalars reach the driver.
    """
    layers = [materialise(layer0, 0)]
    figures = layer_activity(layers[0], degrees, active)
    largest_left = figures.left_behind
    messages: list[int] = []
    residuals: list[float] = []
    converged = True
    for step in range(1, last_layer + 1):
        if figures.active == 0:
            break
        if step > max_supersteps:
            converged = False
            largest_left = max(largest_left, float(layers[-1].agg(F.max("value")).first()[0] or 0.0))
            log.warning("propagation stopped at max_supersteps=%d before layer %d", max_supersteps, last_layer)
            break
        layers.append(materialise(send(layers[-1].where(active), step), step))
        messages.append(figures.messages)
        if step < last_layer:
            figures = layer_activity(layers[-1], degrees, active)
            largest_left = max(largest_left, figures.left_behind)
        residuals.append(largest_left)
        if on_superstep is not None:
            on_superstep(step, messages[-1], largest_left)
    trace = SuperstepTrace(supersteps=len(messages), messages=tuple(messages), residuals=tuple(residuals),
                           max_residual=float(largest_left), converged=converged)
    return layers, trace


def materialise_layer(layer: DataFrame, index: int, checkpoint_interval: int, checkpoint_storage: str) -> DataFrame:
    """Every ``checkpoint_interval``-th layer checkpointed (local or reliable), the others persisted.

    The checkpoint cuts the lineage: a later layer's plan starts here, not at the seeds, so
    it does not grow with lhat. The other layers are persisted because each is read twice
    (as the next frontier and as an estimate).
    """
    if checkpoint_interval > 0 and index > 0 and index % checkpoint_interval == 0:
        return (layer.localCheckpoint(eager=True) if checkpoint_storage == "local"
                else layer.checkpoint(eager=True))
    return layer.persist(StorageLevel.MEMORY_AND_DISK)


# -- RevAff: the parts wired together -----------------------------------------------------

@dataclass(frozen=True)
class PropagationRun:
    """The settings and sizes of one propagation."""

    method: str
    epsilon: float  # the bound the scores hold; 0.0 for exact
    lhat: int
    beta: float
    theta: float
    seeds: int           # labelled customers in the graph
    skipped_labels: int  # labelled customers not in the graph
    personas: int
    edges: int


@dataclass(frozen=True)
class PropagationResult:
    customer_affinity: DataFrame  # customer_id, persona, score
    product_affinity: DataFrame   # product_id, persona, score
    run: PropagationRun
    trace: SuperstepTrace

    @property
    def stats(self) -> dict:
        """The run and its trace as one flat record: the CLI's JSON and propagation_runs' row."""
        trace = self.trace
        return {**asdict(self.run), "supersteps": trace.supersteps, "messages": list(trace.messages),
                "max_residual": trace.max_residual, "converged": trace.converged}


def propagate(spark: SparkSession, graph: PurchaseGraph, labels: DataFrame, config: PropagationConfig,
              method: Optional[str] = None, epsilon: Optional[float] = None,
              on_superstep: Optional[SuperstepCallback] = None,
              targets: Optional[DataFrame] = None) -> PropagationResult:
    """Affinities of every customer and product to every labelled persona (see the module doc).

    ``labels``: (customer_id, persona), one row per label. ``config``: the propagation
    settings (``AppConfig.propagation``). ``method``/``epsilon`` override the config;
    epsilon None and config epsilon null -> ``default_epsilon``. Every customer score is
    within epsilon of the exact walk affinity (``push_threshold``). ``targets`` (customer_id):
    only these customers' scores are wanted, so the last superstep sends only to them; their
    scores are those of the whole walk (a layer's entry depends only on the layer before).

    Engineering: edges are hash-partitioned by customer id (``graph.build_graph``), so a
    customer layer joins them without a shuffle (``push``); a product layer is broadcast
    (``broadcast_push``) unless ``broadcast_product_layer`` is off. Layers are persisted or
    checkpointed (``materialise_layer``). Besides that broadcast product layer, only
    per-persona and per-superstep scalars reach the driver.
    """
    if not isinstance(config, PropagationConfig):
        raise TypeError(f"propagate() takes a PropagationConfig (AppConfig.propagation), "
                        f"got {type(config).__name__}")
    _validate(config)
    method = method or config.method
    if method not in METHODS:
        raise InputError(f"propagation method {method!r} is not one of {list(METHODS)}")
    in_graph_labels, skipped_customers = labels_in_graph(labels, graph, config.missing_label_policy)
    seeds = seeds_from_labels(in_graph_labels, config.beta)
    # One pass for the per-run scalars; the persona set is small (taxonomy-sized).
    mass_row = seeds.agg(F.sum("mass").alias("mass"), F.countDistinct("customer_id").alias("seeded"),
                         F.collect_set("persona").alias("personas")).first()
    persona_names = sorted(mass_row["personas"] or [])
    epsilon = choose_epsilon(epsilon, config.epsilon, float(mass_row["mass"] or 0.0), graph.customer_count,
                             len(persona_names), config.epsilon_relative)
    exact = method == "exact"
    theta = 0.0 if exact else push_threshold(epsilon, config.lhat)
    run = PropagationRun(method=method, epsilon=0.0 if exact else float(epsilon), lhat=config.lhat,
                         beta=config.beta, theta=theta, seeds=int(mass_row["seeded"] or 0),
                         skipped_labels=skipped_customers, personas=len(persona_names), edges=graph.edge_count)
    broadcasts: list[Broadcast] = []  # product layers shared with the executors in this run
    last_layer = 2 * config.lhat
    last_edges = graph.edges if targets is None else edges_to_targets(graph, targets)

    def send(frontier: DataFrame, step: int) -> DataFrame:
        if step % 2 == 1:  # odd supersteps leave a customer layer, even ones a product layer
            return push(frontier, graph.edges, TO_DST)
        edges = last_edges if step == last_layer else graph.edges
        if config.broadcast_product_layer:
            sums, shared = broadcast_push(frontier, edges, TO_SRC)
            broadcasts.append(shared)
            return sums
        return push(frontier, edges, TO_SRC)

    def materialise(layer: DataFrame, index: int) -> DataFrame:
        return materialise_layer(layer, index, config.checkpoint_interval, config.checkpoint_storage)

    layers, trace = run_supersteps(
        seed_layer(seeds, graph, persona_names), send, at_or_above(theta), graph.vertices.select(ID, "degree"),
        last_layer=last_layer, max_supersteps=config.max_supersteps, materialise=materialise,
        on_superstep=on_superstep)
    customer_affinity = named_scores(average_layers(layers[2::2], config.lhat, spark), graph, CUSTOMER,
                                     persona_names)
    if targets is not None:  # the earlier customer layers (lhat > 1) reached everyone
        customer_affinity = customer_affinity.join(
            targets.select("customer_id").distinct(), "customer_id", "left_semi")
    product_layer = layers[1] if len(layers) > 1 else empty_layer(spark)
    product_affinity = named_scores(product_layer, graph, PRODUCT, persona_names)
    # The outputs are materialised, then the layers are released: the outputs must not
    # recompute the supersteps lazily after their inputs are gone.
    customer_affinity = customer_affinity.localCheckpoint(eager=True)
    product_affinity = product_affinity.localCheckpoint(eager=True)
    for layer in layers:
        layer.unpersist()
    for shared in broadcasts:
        shared.destroy()
    return PropagationResult(customer_affinity, product_affinity, run, trace)


def edges_to_targets(graph: PurchaseGraph, targets: DataFrame) -> DataFrame:
    """The edges of the ``targets`` customers (customer_id), still partitioned by customer."""
    target_ids = (graph.vertices.where(F.col("kind") == CUSTOMER)
                  .join(targets.select(F.col("customer_id").alias("key")).distinct(), "key", "left_semi")
                  .select(F.col(ID).alias(SRC)))
    # Broadcast: targets are labelled customers (the LLM budget); a shuffle join would move every edge.
    return graph.edges.join(F.broadcast(target_ids), SRC, "left_semi")


def average_layers(layers: list[DataFrame], lhat: int, spark: SparkSession) -> DataFrame:
    """(1 / lhat) x the per-(id, persona) sum of the layers (the customer layers 2, 4, ...)."""
    if not layers:
        return empty_layer(spark)
    union = layers[0]
    for layer in layers[1:]:
        union = union.unionByName(layer)
    return union.groupBy(ID, "persona").agg((F.sum("value") / F.lit(float(lhat))).alias("value"))


def named_scores(layer: DataFrame, graph: PurchaseGraph, kind: str, persona_names: list[str]) -> DataFrame:
    """A layer as (customer_id or product_id, persona name, score)."""
    key = "customer_id" if kind == CUSTOMER else "product_id"
    vertices = graph.vertices.where(F.col("kind") == kind).select(ID, F.col("key").alias(key))
    names = F.array(*[F.lit(n) for n in persona_names]) if persona_names else F.array().cast("array<string>")
    return layer.join(vertices, ID).select(
        key, F.element_at(names, F.col("persona") + 1).alias("persona"), F.col("value").alias("score"))


def empty_layer(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], LAYER_SCHEMA)


def write_propagation(spark: SparkSession, tables: Tables, result: PropagationResult,
                      propagation_id: str) -> dict:
    """customer_affinity and product_affinity (overwrite), propagation_runs (append)."""
    customer_ref, product_ref, runs_ref = tables.customer_affinity, tables.product_affinity, tables.propagation_runs
    storage.overwrite(result.customer_affinity, customer_ref, contracts.CUSTOMER_AFFINITY)
    storage.overwrite(result.product_affinity, product_ref, contracts.PRODUCT_AFFINITY)
    run, trace = result.run, result.trace
    run_row = {
        "propagation_id": propagation_id, "method": run.method, "epsilon": run.epsilon,
        "lhat": run.lhat, "beta": run.beta, "seeds": run.seeds, "edges": run.edges,
        "supersteps": trace.supersteps, "messages": [int(m) for m in trace.messages],
        "max_residual": trace.max_residual, "converged": trace.converged,
        "computed_at": datetime.now(timezone.utc).replace(tzinfo=None),
    }
    storage.append(spark.createDataFrame([run_row], contracts.PROPAGATION_RUNS), runs_ref,
                   contracts.PROPAGATION_RUNS)
    return {ref.name: ref.summary(spark) for ref in (customer_ref, product_ref, runs_ref)}


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
