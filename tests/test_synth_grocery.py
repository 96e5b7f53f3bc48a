"""The grocery layout's data: deterministic by seed, weights as fractions, and the planted
personas visible in what households buy (the end-to-end CLI run is
tests/test_grocery_worked_example.py)."""

from __future__ import annotations

import dataclasses

from chispa import assert_df_equality
from pyspark.sql import functions as F

from persona_lib.synth_grocery import CATALOGUE_SCHEMA, GroceryParams, catalogue_rows, labels, transactions, truth

SMALL = GroceryParams(households=120, seed=5, labelled_share=0.5)


def test_the_same_seed_gives_the_same_transactions_and_another_seed_others(spark):
    first = transactions(spark, SMALL)
    assert_df_equality(first, transactions(spark, SMALL).repartition(3), ignore_row_order=True)
    other = transactions(spark, dataclasses.replace(SMALL, seed=6))
    assert first.select("household_key", "sku").exceptAll(other.select("household_key", "sku")).count() > 0


def test_weighed_goods_have_fractional_quantities_and_a_basket_lists_a_sku_once(spark):
    catalogue = spark.createDataFrame(catalogue_rows(), CATALOGUE_SCHEMA).select("sku", "by_weight")
    lines = transactions(spark, SMALL).join(catalogue, "sku")
    fractional = lines.groupBy("by_weight").agg(F.count_if(F.col("quantity") != F.floor("quantity")).alias("n"))
    assert {row.by_weight: row.n > 0 for row in fractional.collect()} == {True: True, False: False}
    assert lines.groupBy("basket_id", "sku").count().where("count > 1").count() == 0


def test_households_buy_the_categories_of_their_planted_personas_more_than_others_do(spark):
    catalogue = spark.createDataFrame(catalogue_rows(), CATALOGUE_SCHEMA).select("sku", "category")
    bakers = truth(spark, SMALL).select(
        "household_key", F.coalesce(F.col("personas").contains("Home Baker"), F.lit(False)).alias("baker"))
    baking_share = (transactions(spark, SMALL).join(catalogue, "sku").join(bakers, "household_key")
                    .groupBy("baker").agg(F.avg((F.col("category") == "Baking").cast("double")).alias("share")))
    share = {row.baker: row.share for row in baking_share.collect()}
    assert share[True] > 5 * share[False]


def test_labels_are_the_truth_of_a_subset_with_none_of_these_rows_empty(spark):
    labelled = labels(spark, SMALL)
    planted = truth(spark, SMALL).select(F.col("household_key").cast("string").alias("customer_id"), "personas")
    assert labelled.exceptAll(planted).count() == 0
    counts = labelled.agg(F.count(F.lit(1)).alias("rows"), F.count_if(F.col("personas").isNull()).alias("none")).first()
    assert 0 < counts.rows < SMALL.households and counts.none > 0
