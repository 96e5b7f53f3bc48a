"""The purchase graph: one edge per pair, optional weights, degrees and walk transitions."""

from __future__ import annotations

from datetime import datetime

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F

from persona_lib.errors import DependencyError, InputError
from persona_lib.graph import build_graph, edges_from_events, edges_from_pairs

EDGE_SCHEMA = "customer_id string, product_id string, weight double"


def events(spark, rows):
    return spark.createDataFrame(
        [(c, p, datetime.fromisoformat(ts)) for c, p, ts in rows],
        "customer_id string, product_id string, event_ts timestamp")


SAMPLE = [("1", "A", "2024-01-01"), ("1", "A", "2024-03-31"), ("1", "B", "2024-03-31"), ("2", "A", "2024-03-31")]


def test_pairs_become_one_unweighted_edge_each(spark):
    pairs = spark.createDataFrame([("1", "A"), ("1", "A"), ("1", "B"), ("2", "A")], "customer_id string, product_id string")
    expected = spark.createDataFrame([("1", "A", 1.0), ("1", "B", 1.0), ("2", "A", 1.0)], EDGE_SCHEMA)
    actual = edges_from_pairs(pairs).orderBy("customer_id", "product_id")
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_count_weighting_counts_the_pairs_lines(spark):
    expected = spark.createDataFrame([("1", "A", 2.0), ("1", "B", 1.0), ("2", "A", 1.0)], EDGE_SCHEMA)
    actual = edges_from_events(events(spark, SAMPLE), weighting="count").orderBy("customer_id", "product_id")
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_recency_weighting_halves_per_half_life(spark):
    # 2024-01-01 is 90 days before 2024-03-31 (the latest event, the default as_of).
    expected = spark.createDataFrame([("1", "A", 1.5), ("1", "B", 1.0), ("2", "A", 1.0)], EDGE_SCHEMA)
    actual = edges_from_events(events(spark, SAMPLE), weighting="recency", half_life_days=90.0)
    assert_approx_df_equality(actual.orderBy("customer_id", "product_id"), expected, precision=1e-12,
                              ignore_nullable=True)


def test_unknown_weighting_is_an_input_error(spark):
    with pytest.raises(InputError, match="edge_weighting"):
        edges_from_events(events(spark, SAMPLE), weighting="price")


def test_graph_degrees_and_transitions_divide_by_the_receiving_side(spark):
    edges = spark.createDataFrame([("1", "A", 1.0), ("1", "B", 3.0), ("2", "A", 1.0)], EDGE_SCHEMA)
    graph = build_graph(edges)
    assert (graph.edge_count, graph.customer_count, graph.product_count) == (3, 2, 2)
    keys = graph.vertices.select("id", "key")
    named = (graph.edges.join(keys.withColumnRenamed("key", "customer_id"), F.col("src") == F.col("id")).drop("id")
             .join(keys.withColumnRenamed("key", "product_id"), F.col("dst") == F.col("id"))
             .select("customer_id", "product_id", "to_product", "to_customer").orderBy("customer_id", "product_id"))
    # to_product = w / (weight sum of the product), to_customer = w / (weight sum of the customer).
    expected = spark.createDataFrame(
        [("1", "A", 0.5, 0.25), ("1", "B", 1.0, 0.75), ("2", "A", 0.5, 1.0)],
        "customer_id string, product_id string, to_product double, to_customer double")
    assert_approx_df_equality(named, expected, precision=1e-12, ignore_nullable=True)
    degrees = graph.vertices.select("kind", "key", "degree", "weight_sum").orderBy("kind", "key")
    expected_degrees = spark.createDataFrame(
        [("customer", "1", 2, 4.0), ("customer", "2", 1, 1.0), ("product", "A", 2, 2.0), ("product", "B", 1, 3.0)],
        "kind string, key string, degree long, weight_sum double")
    assert_df_equality(degrees, expected_degrees, ignore_nullable=True)
    graph.unpersist()


def test_broadcast_and_shuffled_vertex_joins_build_the_same_edges_partitioned_by_src(spark):
    rows = [(str(c), f"P{(c * 7 + k) % 13}", 1.0 + k) for c in range(40) for k in range(c % 5 + 1)]
    edges = spark.createDataFrame(rows, EDGE_SCHEMA).dropDuplicates(["customer_id", "product_id"])

    def named_edges(broadcast_vertices: int):
        graph = build_graph(edges, partitions=3, broadcast_vertices=broadcast_vertices)
        keys = graph.vertices.select("id", "key")
        # Every edge sits in the partition its src hashes to: the supersteps' joins rely on it.
        misplaced = graph.edges.where(F.spark_partition_id() != F.pmod(F.hash("src"), F.lit(3))).count()
        named = (graph.edges.join(keys.withColumnRenamed("key", "customer_id"), F.col("src") == F.col("id"))
                 .drop("id").join(keys.withColumnRenamed("key", "product_id"), F.col("dst") == F.col("id"))
                 .select("customer_id", "product_id", "weight", "to_product", "to_customer")
                 .orderBy("customer_id", "product_id").localCheckpoint())
        graph.unpersist()
        return named, misplaced

    broadcast, broadcast_misplaced = named_edges(broadcast_vertices=1_000)
    shuffled, shuffled_misplaced = named_edges(broadcast_vertices=0)
    assert broadcast_misplaced == shuffled_misplaced == 0
    assert broadcast.count() == len({(c, p) for c, p, _ in rows})
    assert_df_equality(broadcast, shuffled, ignore_nullable=True)


@pytest.mark.parametrize("bad_edge", [("2", "A", 0.0), ("2", "A", None), (None, "A", 1.0), ("2", None, 1.0)],
                         ids=["zero-weight", "no-weight", "no-customer", "no-product"])
def test_an_edge_without_both_ends_or_a_positive_weight_is_an_input_error_naming_it(spark, bad_edge):
    edges = spark.createDataFrame([("1", "A", 1.0), bad_edge, ("3", "B", 2.0)], EDGE_SCHEMA)
    with pytest.raises(InputError, match="weight > 0") as error:
        build_graph(edges)
    assert str(bad_edge[2]) in str(error.value) and "'customer_id': " + repr(bad_edge[0]) in str(error.value)


def test_graphframe_needs_the_jvm_library(spark):
    graph = build_graph(spark.createDataFrame([("1", "A", 1.0)], EDGE_SCHEMA))
    try:
        frame = graph.to_graphframe()
    except DependencyError as exc:
        assert "GraphFrames JVM library" in str(exc)
    else:  # the library is on the session: the GraphFrame has our vertices and edges
        assert frame.edges.count() == 1
    graph.unpersist()


PRODUCTS_SCHEMA = "product_id string, product_group string"


def test_group_keys_make_one_vertex_per_catalogue_group_and_leave_ungrouped_products_alone(spark):
    from persona_lib.graph import edges_by_key, product_graph_keys

    products = spark.createDataFrame([("MILK", "Dairy"), ("EGGS", "Dairy"), ("BREAD", None)], PRODUCTS_SCHEMA)
    keys = product_graph_keys(products, "group")
    edges = spark.createDataFrame([("1", "MILK", 2.0), ("1", "EGGS", 1.0), ("1", "BREAD", 1.0), ("2", "EGGS", 3.0)],
                                  EDGE_SCHEMA)
    unweighted = edges_by_key(edges.withColumn("weight", F.lit(1.0)), keys, "none").orderBy("customer_id", "product_id")
    assert_df_equality(unweighted, spark.createDataFrame(
        [("1", "BREAD", 1.0), ("1", "group:Dairy", 1.0), ("2", "group:Dairy", 1.0)], EDGE_SCHEMA), ignore_nullable=True)
    counted = edges_by_key(edges, keys, "count").orderBy("customer_id", "product_id")
    assert_df_equality(counted, spark.createDataFrame(
        [("1", "BREAD", 1.0), ("1", "group:Dairy", 3.0), ("2", "group:Dairy", 3.0)], EDGE_SCHEMA), ignore_nullable=True)
    assert product_graph_keys(products, "product") is None


def test_a_group_vertex_affinity_goes_back_to_every_product_of_the_group(spark):
    from persona_lib.graph import affinity_by_product, product_graph_keys

    keys = product_graph_keys(spark.createDataFrame([("MILK", "Dairy"), ("EGGS", "Dairy"), ("BREAD", None)],
                                                    PRODUCTS_SCHEMA), "group")
    walk = spark.createDataFrame([("group:Dairy", "Baker", 0.25), ("BREAD", "Baker", 0.5)],
                                 "product_id string, persona string, score double")
    expected = spark.createDataFrame([("BREAD", "Baker", 0.5), ("EGGS", "Baker", 0.25), ("MILK", "Baker", 0.25)],
                                     "product_id string, persona string, score double")
    assert_df_equality(affinity_by_product(walk, keys).orderBy("product_id"), expected, ignore_nullable=True)


def test_group_keys_need_the_catalogue_group_column(spark):
    from persona_lib.graph import product_graph_keys

    with pytest.raises(InputError, match="ingest.products.columns.group"):
        product_graph_keys(spark.createDataFrame([("MILK",)], "product_id string"), "group")


def test_the_run_walks_group_vertices_and_publishes_each_product_its_groups_affinity(spark, config):
    import dataclasses

    from persona_lib import contracts, storage
    from persona_lib.pipeline import per_product_affinity, purchase_graph
    from persona_lib.propagation import propagate

    grouped = dataclasses.replace(config, graph=dataclasses.replace(config.graph, product_key="group"))
    products = spark.createDataFrame(
        [("MILK", "Milk", 2, 2, "Dairy"), ("EGGS", "Eggs", 1, 1, "Dairy"), ("BREAD", "Bread", 1, 1, None)],
        "product_id string, title string, events long, customers long, product_group string")
    storage.overwrite(products.select("product_id", "title", F.lit(None).cast("timestamp").alias("first_seen"),
                                      F.lit(None).cast("timestamp").alias("last_seen"), "events", "customers",
                                      "product_group"),
                      storage.resolve_tables(grouped).get("products"), contracts.PRODUCTS)
    purchases = spark.createDataFrame([("1", "MILK"), ("2", "EGGS"), ("2", "MILK"), ("3", "BREAD")],
                                      "customer_id string, product_id string")

    edges, graph, keys = purchase_graph(spark, grouped, storage.resolve_tables(grouped), purchases)
    assert (edges.count(), graph.product_count, graph.edge_count) == (4, 2, 3)  # Dairy and BREAD
    seeds = spark.createDataFrame([("1", "Baker")], "customer_id string, persona string")
    result = per_product_affinity(propagate(spark, graph, seeds, grouped.propagation), keys)
    scores = {r["product_id"]: r["score"] for r in result.product_affinity.collect()}
    # Customer 1 reaches only Dairy: both its products carry the same affinity; BREAD none.
    assert set(scores) == {"MILK", "EGGS"} and scores["MILK"] == scores["EGGS"] > 0
