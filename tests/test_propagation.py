"""Propagation: every Spark estimate is within epsilon of an independent scipy exact answer.

The oracle is persona_lib/testing/reference.py (scipy sparse products written from the paper's formulas),
never the Spark code path. Graphs: a generated one with the awkward shapes (power-law
degrees, customers with one product, products with one buyer, a component no label
reaches) and the paper's real OnlineRetail train split.
"""

from __future__ import annotations

import dataclasses
import gzip

import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality

from persona_lib.config import REPO_ROOT, PropagationConfig
from persona_lib.errors import InputError
from persona_lib.graph import build_graph, edges_from_pairs
from persona_lib.propagation import (
    TO_DST,
    TO_SRC,
    at_or_above,
    average_layers,
    broadcast_push,
    default_epsilon,
    labels_in_graph,
    named_scores,
    propagate,
    push,
    run_supersteps,
    seed_layer,
    seeds_from_labels,
    write_propagation,
)
from persona_lib.testing.reference import exact_affinity, seed_matrix, walk_matrices

PAPER_DATA = REPO_ROOT / "data" / "gplr_online_retail"
BASE = PropagationConfig(lhat=1, beta=0.5, epsilon=None, method="revaff")
SLACK = 1e-12  # float summation order differs between Spark and scipy


def awkward_pairs(seed: int = 11) -> pd.DataFrame:
    """Power-law customer degrees and product popularity, plus the edge cases, as pairs."""
    rng = np.random.default_rng(seed)
    customers, products = 240, 90
    popularity = 1.0 / np.arange(1, products + 1) ** 1.1
    popularity /= popularity.sum()
    rows = []
    for c in range(customers):
        degree = min(products, int(rng.pareto(1.3)) + 1)  # heavy tail, many of degree 1
        for p in rng.choice(products, size=degree, replace=False, p=popularity):
            rows.append((f"c{c}", f"p{p}"))
    rows += [(f"c{c}", f"solo{c}") for c in range(0, 30, 3)]  # products with one buyer
    rows += [("lone", "p0")]                                  # a customer with one product
    rows += [("island-a", "island-p"), ("island-b", "island-p"), ("island-b", "island-q")]
    rows += [("c5", "p1"), ("c5", "p1")]                      # duplicate pairs count once
    return pd.DataFrame(rows, columns=["customer_id", "product_id"])


def awkward_labels(pairs: pd.DataFrame, seed: int = 5, personas: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    customers = sorted(set(pairs["customer_id"]) - {"island-a", "island-b"})
    labelled = rng.choice(customers, size=len(customers) // 4, replace=False)
    rows = []
    for customer in labelled:
        # Persona 0 is common, the last persona rare: the de-bias factor matters.
        weights = np.linspace(3.0, 0.3, personas)
        picks = rng.choice(personas, size=int(rng.integers(1, 4)), replace=False, p=weights / weights.sum())
        rows += [(customer, f"Persona {k}") for k in picks]
    return pd.DataFrame(rows, columns=["customer_id", "persona"])


@pytest.fixture(scope="module")
def awkward(spark):
    pairs = awkward_pairs()
    graph = build_graph(edges_from_pairs(spark.createDataFrame(pairs)))
    yield pairs, awkward_labels(pairs), graph
    graph.unpersist()


def spark_scores(result) -> pd.DataFrame:
    return result.customer_affinity.toPandas()


def max_error(result, reference) -> float:
    """Largest |Spark - exact| over every customer x persona of the reference (absent = 0)."""
    estimate = spark_scores(result)
    unknown = set(estimate["customer_id"]) - set(reference.customers)
    assert not unknown, f"scores for customers outside the graph: {sorted(unknown)[:5]}"
    assert set(estimate["persona"]) <= set(reference.personas)
    if not reference.personas:
        assert estimate.empty
        return 0.0
    dense = (estimate.pivot_table(index="customer_id", columns="persona", values="score", aggfunc="sum")
             .reindex(index=reference.customers, columns=reference.personas).fillna(0.0).to_numpy())
    return float(np.abs(dense - reference.customer_scores).max())


@pytest.mark.parametrize("lhat,broadcast", [(1, True), (2, True), (3, True), (2, False)])
def test_spark_exact_equals_scipy_exact(spark, awkward, lhat, broadcast):
    """broadcast: the product layer as a broadcast matrix; False: plain message rows."""
    pairs, labels, graph = awkward
    config = dataclasses.replace(BASE, lhat=lhat, broadcast_product_layer=broadcast)
    result = propagate(spark, graph, spark.createDataFrame(labels), config, method="exact")
    reference = exact_affinity(pairs, labels, lhat)
    assert max_error(result, reference) <= 1e-12
    assert result.stats["supersteps"] == 2 * lhat and result.stats["max_residual"] == 0.0


@pytest.mark.parametrize("lhat", [1, 2, 3])
@pytest.mark.parametrize("epsilon", [0.05, 0.01, 0.001])
def test_revaff_within_epsilon_of_exact(spark, awkward, lhat, epsilon):
    pairs, labels, graph = awkward
    config = dataclasses.replace(BASE, lhat=lhat)
    result = propagate(spark, graph, spark.createDataFrame(labels), config, epsilon=epsilon)
    reference = exact_affinity(pairs, labels, lhat)
    assert max_error(result, reference) <= epsilon + SLACK
    assert result.stats["converged"] and result.stats["max_residual"] < epsilon / (2 * lhat)


@pytest.mark.parametrize("lhat", [1, 2])
def test_targets_get_the_whole_walks_scores_and_nobody_else_gets_any(spark, awkward, lhat):
    pairs, labels, graph = awkward
    config = dataclasses.replace(BASE, lhat=lhat)
    targets = sorted(set(pairs["customer_id"]))[::3]
    label_frame = spark.createDataFrame(labels)
    whole = spark_scores(propagate(spark, graph, label_frame, config, epsilon=0.01))
    restricted = spark_scores(propagate(spark, graph, label_frame, config, epsilon=0.01,
                                        targets=spark.createDataFrame([(t,) for t in targets], "customer_id string")))
    assert set(restricted["customer_id"]) <= set(targets)
    expected = whole[whole["customer_id"].isin(targets)]
    key = ["customer_id", "persona"]
    pd.testing.assert_frame_equal(restricted.sort_values(key).reset_index(drop=True),
                                  expected.sort_values(key).reset_index(drop=True), rtol=1e-12)


def test_coarse_epsilon_sends_fewer_messages_but_keeps_the_bound(spark, awkward):
    pairs, labels, graph = awkward
    fine = propagate(spark, graph, spark.createDataFrame(labels), BASE, epsilon=1e-4)
    coarse = propagate(spark, graph, spark.createDataFrame(labels), BASE, epsilon=0.2)
    assert sum(coarse.stats["messages"]) < sum(fine.stats["messages"])
    assert max_error(coarse, exact_affinity(pairs, labels, 1)) <= 0.2


def test_weighted_edges_keep_the_bound(spark):
    pairs = awkward_pairs(seed=3)
    weighted = pairs.drop_duplicates().assign(
        weight=np.random.default_rng(1).uniform(0.1, 5.0, size=len(pairs.drop_duplicates())))
    labels = awkward_labels(pairs, seed=9)
    graph = build_graph(spark.createDataFrame(weighted))
    for lhat, epsilon in ((1, 0.01), (2, 0.003)):
        config = dataclasses.replace(BASE, lhat=lhat)
        result = propagate(spark, graph, spark.createDataFrame(labels), config, epsilon=epsilon)
        assert max_error(result, exact_affinity(weighted, labels, lhat)) <= epsilon + SLACK
    graph.unpersist()


def test_one_persona_only(spark, awkward):
    pairs, labels, graph = awkward
    only = labels.assign(persona="Persona 0").drop_duplicates()
    result = propagate(spark, graph, spark.createDataFrame(only), BASE, epsilon=0.002)
    reference = exact_affinity(pairs, only, 1)
    assert reference.personas == ["Persona 0"]
    assert max_error(result, reference) <= 0.002 + SLACK


def test_no_labels_gives_empty_affinities(spark, awkward):
    _, _, graph = awkward
    none = spark.createDataFrame([], "customer_id string, persona string")
    result = propagate(spark, graph, none, BASE)
    assert result.customer_affinity.count() == 0 and result.product_affinity.count() == 0
    assert result.stats["seeds"] == 0 and result.stats["supersteps"] == 0 and result.stats["converged"]


def test_unreached_component_and_unlabelled_persona_get_no_scores(spark, awkward):
    _, labels, graph = awkward
    result = propagate(spark, graph, spark.createDataFrame(labels), BASE, epsilon=0.0001)
    scored = spark_scores(result)
    assert not scored["customer_id"].isin(["island-a", "island-b"]).any()
    assert "Persona 99" not in set(scored["persona"])  # a persona nobody has: no seed, no score


def test_label_of_customer_outside_graph_is_skipped_and_counted(spark, awkward):
    pairs, labels, graph = awkward
    extra = pd.concat([labels, pd.DataFrame([("ghost", "Persona 1"), ("ghost", "Persona 2")],
                                            columns=["customer_id", "persona"])],
                      ignore_index=True)
    result = propagate(spark, graph, spark.createDataFrame(extra), BASE, epsilon=0.01)
    assert result.stats["skipped_labels"] == 1
    assert max_error(result, exact_affinity(pairs, labels, 1)) <= 0.01 + SLACK


def test_label_of_customer_outside_graph_is_an_error_when_asked(spark, awkward):
    _, labels, graph = awkward
    extra = pd.concat([labels, pd.DataFrame([("ghost", "Persona 1")], columns=["customer_id", "persona"])],
                      ignore_index=True)
    strict = dataclasses.replace(BASE, missing_label_policy="error")
    with pytest.raises(InputError, match="ghost"):
        propagate(spark, graph, spark.createDataFrame(extra), strict)


def test_seeds_are_row_normalised_and_debiased(spark):
    labels = spark.createDataFrame(
        [("a", "Tea"), ("a", "Gift"), ("b", "Tea"), ("c", "Tea"), ("c", "Tea")], "customer_id string, persona string")
    # Shares: Tea 3/4, Gift 1/4 (the duplicate counts once); c_Tea = (1/3) ** 0.5, c_Gift = 1.
    expected = spark.createDataFrame(
        [("a", "Gift", 0.5), ("a", "Tea", (1 / 3) ** 0.5 / 2), ("b", "Tea", (1 / 3) ** 0.5),
         ("c", "Tea", (1 / 3) ** 0.5)], "customer_id string, persona string, mass double")
    actual = seeds_from_labels(labels, beta=0.5).orderBy("customer_id", "persona")
    assert_approx_df_equality(actual, expected, precision=1e-12, ignore_nullable=True)


def test_default_epsilon_is_relative_to_the_mean_affinity():
    assert default_epsilon(total_seed_mass=100.0, customers=1000, personas=20, relative=0.5) == pytest.approx(0.0025)
    assert default_epsilon(total_seed_mass=0.0, customers=1000, personas=20, relative=0.5) == 0.0


def test_superstep_callback_reports_every_superstep(spark, awkward):
    _, labels, graph = awkward
    seen = []
    config = dataclasses.replace(BASE, lhat=2)
    result = propagate(spark, graph, spark.createDataFrame(labels), config, epsilon=0.001,
                       on_superstep=lambda step, messages, residual: seen.append((step, messages)))
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert [m for _, m in seen] == result.stats["messages"] and all(m > 0 for m in result.stats["messages"])


def test_max_supersteps_reached_is_reported_as_not_converged(spark, awkward):
    _, labels, graph = awkward
    config = dataclasses.replace(BASE, lhat=2, max_supersteps=2)
    result = propagate(spark, graph, spark.createDataFrame(labels), config, epsilon=0.001)
    assert result.stats["supersteps"] == 2 and not result.stats["converged"]
    assert result.stats["max_residual"] >= 0.001 / 4


def test_write_propagation_writes_the_three_tables(spark, awkward, config, tables):
    _, labels, graph = awkward
    result = propagate(spark, graph, spark.createDataFrame(labels), config.propagation, epsilon=0.01)
    written = write_propagation(spark, tables, result, "p-1")
    assert set(written) == {"customer_affinity", "product_affinity", "propagation_runs"}
    runs = spark.read.format("delta").load(written["propagation_runs"]["location"]).collect()
    assert [r["propagation_id"] for r in runs] == ["p-1"] and runs[0]["converged"]
    customers = spark.read.format("delta").load(written["customer_affinity"]["location"])
    assert customers.count() == result.customer_affinity.count()
    products = spark.read.format("delta").load(written["product_affinity"]["location"]).toPandas()
    reference = exact_affinity(awkward[0], labels, 1).product_frame()
    merged = reference.merge(products, on=["product_id", "persona"], how="left").fillna(0.0)
    assert (merged["score_x"] - merged["score_y"]).abs().max() <= 0.01 / 2 + SLACK


def test_propagate_takes_only_the_propagation_settings(spark, awkward, config):
    _, labels, graph = awkward
    with pytest.raises(TypeError, match="PropagationConfig"):
        propagate(spark, graph, spark.createDataFrame(labels), config)


# -- the parts on their own: push step and superstep loop ------------------------------------

# Customers 1, 2; products 10, 11; edges 1-10, 1-11, 2-10. to_product = w / W(product):
# 10 has two buyers; to_customer = w / W(customer): customer 1 bought two products.
PUSH_EDGES = [(1, 10, 0.5, 0.5), (1, 11, 1.0, 0.5), (2, 10, 0.5, 1.0)]
EDGES_DDL = "src long, dst long, to_product double, to_customer double"
LAYER_DDL = "id long, persona int, value double"


def test_push_to_dst_sums_value_times_transition_per_receiving_id(spark):
    edges = spark.createDataFrame(PUSH_EDGES, EDGES_DDL)
    customers = spark.createDataFrame([(1, 0, 0.6), (2, 0, 0.4), (2, 1, 1.0)], LAYER_DDL)
    # Product 10, persona 0: 0.6 x 0.5 + 0.4 x 0.5; product 11: 0.6 x 1.0; persona 1: 1.0 x 0.5.
    expected = spark.createDataFrame([(10, 0, 0.5), (10, 1, 0.5), (11, 0, 0.6)], LAYER_DDL)
    broadcast_sums, shared = broadcast_push(customers, edges, TO_DST)
    for sums in (push(customers, edges, TO_DST), broadcast_sums):
        assert_approx_df_equality(sums, expected, precision=1e-15, ignore_row_order=True,
                                  ignore_nullable=True)
    shared.destroy()


def test_push_to_src_and_its_broadcast_kernel_agree(spark):
    edges = spark.createDataFrame(PUSH_EDGES, EDGES_DDL)
    products = spark.createDataFrame([(10, 0, 0.5), (11, 1, 0.2)], LAYER_DDL)
    # Customer 1 gets half of each of its products' values, customer 2 all of product 10's.
    expected = spark.createDataFrame([(1, 0, 0.25), (1, 1, 0.1), (2, 0, 0.5)], LAYER_DDL)
    sums, shared = broadcast_push(products, edges, TO_SRC)
    assert_approx_df_equality(sums, expected, precision=1e-15, ignore_row_order=True, ignore_nullable=True)
    shared.destroy()
    assert_approx_df_equality(push(products, edges, TO_SRC), expected, precision=1e-15,
                              ignore_row_order=True, ignore_nullable=True)


TINY_PAIRS = pd.DataFrame([("a", "x"), ("a", "y"), ("b", "x"), ("c", "y"), ("c", "z"), ("d", "z"), ("e", "w")],
                          columns=["customer_id", "product_id"])
TINY_LABELS = pd.DataFrame([("a", "Tea"), ("b", "Tea"), ("b", "Gift"), ("d", "Gift")],
                           columns=["customer_id", "persona"])


@pytest.fixture(scope="module")
def tiny_walk(spark):
    graph = build_graph(edges_from_pairs(spark.createDataFrame(TINY_PAIRS)))
    in_graph, _ = labels_in_graph(spark.createDataFrame(TINY_LABELS), graph)
    layer0 = seed_layer(seeds_from_labels(in_graph, 0.5), graph, ["Gift", "Tea"])
    yield graph, layer0
    graph.unpersist()


def oracle_layers(last_layer: int) -> tuple[list, np.ndarray, np.ndarray]:
    """scipy: layers 0..last_layer as dense matrices, and the customer and product degrees."""
    walk = walk_matrices(TINY_PAIRS)
    seeds, _ = seed_matrix(TINY_LABELS, walk.customers, 0.5)
    layers = [seeds.toarray()]
    for t in range(1, last_layer + 1):
        layers.append((walk.to_customers if t % 2 else walk.to_products) @ layers[-1])
    return layers, np.diff(walk.to_products.indptr), np.diff(walk.to_customers.indptr)


def run_tiny_loop(graph, layer0, last_layer: int, max_supersteps: int = 64):
    def send(frontier, step):
        return push(frontier, graph.edges, TO_DST if step % 2 else TO_SRC)

    return run_supersteps(layer0, send, at_or_above(0.0), graph.vertices.select("id", "degree"),
                          last_layer=last_layer, max_supersteps=max_supersteps,
                          materialise=lambda layer, index: layer.cache())


def test_superstep_loop_trace_and_scores_match_scipy(spark, tiny_walk):
    graph, layer0 = tiny_walk
    layers, trace = run_tiny_loop(graph, layer0, last_layer=4)
    exact, customer_degree, product_degree = oracle_layers(4)
    # A layer sends one message per edge of every vertex holding a non-zero entry.
    degree_of_layer = [customer_degree if t % 2 == 0 else product_degree for t in range(4)]
    expected_messages = tuple(int(((exact[t] > 0) * degree_of_layer[t][:, None]).sum()) for t in range(4))
    assert (trace.supersteps, trace.messages, trace.converged) == (4, expected_messages, True)
    assert trace.residuals == (0.0, 0.0, 0.0, 0.0) and trace.max_residual == 0.0
    scores = named_scores(average_layers(layers[2::2], 2, spark), graph, "customer", ["Gift", "Tea"])
    reference = exact_affinity(TINY_PAIRS, TINY_LABELS, lhat=2).customer_frame()
    assert_approx_df_equality(scores.orderBy("customer_id", "persona"),
                              spark.createDataFrame(reference.sort_values(["customer_id", "persona"])),
                              precision=1e-12, ignore_nullable=True)


def test_superstep_loop_cut_off_is_not_converged_and_leaves_the_last_layer_behind(spark, tiny_walk):
    graph, layer0 = tiny_walk
    layers, trace = run_tiny_loop(graph, layer0, last_layer=4, max_supersteps=3)
    exact, _, _ = oracle_layers(3)
    assert (trace.supersteps, len(trace.messages), len(layers), trace.converged) == (3, 3, 4, False)
    assert trace.max_residual == pytest.approx(exact[3].max(), rel=1e-12)


def paper_pairs() -> pd.DataFrame:
    with gzip.open(PAPER_DATA / "split_train.csv.gz", "rt") as handle:
        train = pd.read_csv(handle, usecols=["CustomerID", "Description"], dtype=str)
    return train.rename(columns={"CustomerID": "customer_id", "Description": "product_id"}).drop_duplicates()


def paper_labels(fraction: float = 0.2, seed: int = 42) -> pd.DataFrame:
    recorded = pd.read_csv(PAPER_DATA / "user_labels.csv.gz", dtype=str)
    picked = recorded.sample(frac=fraction, random_state=seed)
    exploded = picked.assign(persona=picked["personas"].str.split("|")).explode("persona")
    labels = exploded.rename(columns={"CustomerID": "customer_id"})[["customer_id", "persona"]].dropna()
    return labels[labels["persona"] != "Unrepresentable"].reset_index(drop=True)  # the paper drops them


@pytest.fixture(scope="module")
def online_retail(spark):
    pairs = paper_pairs()
    graph = build_graph(edges_from_pairs(spark.createDataFrame(pairs)))
    yield pairs, paper_labels(), graph
    graph.unpersist()


@pytest.mark.parametrize("lhat,epsilon", [(1, 0.005), (2, 0.02), (3, 0.01)])
def test_revaff_within_epsilon_on_online_retail(spark, online_retail, lhat, epsilon):
    pairs, labels, graph = online_retail
    config = dataclasses.replace(BASE, lhat=lhat)
    result = propagate(spark, graph, spark.createDataFrame(labels), config, epsilon=epsilon)
    reference = exact_affinity(pairs, labels, lhat)
    assert len(reference.personas) == result.stats["personas"] == 19  # one persona never occurs
    assert max_error(result, reference) <= epsilon + SLACK
