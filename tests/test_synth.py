"""Synthetic purchases: deterministic by seed, with the planted personas in the data."""

from __future__ import annotations

import dataclasses

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from persona_lib.config import SynthConfig
from persona_lib.errors import ConfigError
from persona_lib.synth import generate_events, planted_truth, write_synth

SMALL = SynthConfig(customers=300, products=120, events=4000, personas=6, seed=11)


def without_ingest_time(df):
    return df.drop("ingested_at")


def test_same_seed_gives_the_same_events(spark):
    first = without_ingest_time(generate_events(spark, SMALL))
    second = without_ingest_time(generate_events(spark, SMALL).repartition(3))
    assert_df_equality(first, second, ignore_row_order=True)


def test_another_seed_gives_other_events(spark):
    first = generate_events(spark, SMALL).select("customer_id", "product_id")
    other = generate_events(spark, dataclasses.replace(SMALL, seed=12)).select("customer_id", "product_id")
    assert first.exceptAll(other).count() > 0


def test_events_mostly_buy_products_of_the_planted_personas(spark):
    params = dataclasses.replace(SMALL, noise=0.1)
    events = generate_events(spark, params)
    truth = planted_truth(spark, params)
    persona_of_product = F.format_string("Persona %s", F.regexp_extract("product_title", r"PERSONA (\d+)$", 1))
    labelled = events.withColumn("persona", persona_of_product).join(truth, "customer_id")
    share_planted = labelled.select(F.avg(F.expr("cast(array_contains(personas, persona) as double)"))).first()[0]
    assert 0.88 <= share_planted <= 1.0


def test_invalid_parameters_are_rejected_by_name(spark):
    with pytest.raises(ConfigError, match="products"):
        generate_events(spark, dataclasses.replace(SMALL, products=3))


def test_write_synth_writes_its_three_tables_where_the_tables_say(spark, tables):
    summary = write_synth(spark, tables, SMALL)
    assert set(summary["tables"]) == {"synth_purchase_events", "synth_products", "synth_truth"}
    assert summary["tables"]["synth_truth"]["location"] == tables.synth_truth.location
    assert tables.synth_truth.location.endswith("/tables/synth/customer_truth")
    assert_df_equality(tables.synth_truth.read(spark), planted_truth(spark, SMALL),
                       ignore_row_order=True, ignore_nullable=True)
    assert tables.synth_purchase_events.read(spark).count() == summary["events"]
