"""A mapped source's rows: typed through the column mapping, each kept or quarantined with one
reason naming the field, keyed by content so a re-read maps every row to the same event."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from persona_lib.config import IngestConfig, IngestSourceConfig, SourceColumns
from persona_lib.errors import InputError
from persona_lib.ingest_sources import coerce_source, raw_text_of_quarantined_only

ORDERS_SCHEMA = "cust_no string, sku string, qty string, sold_at string, order_no string, price double"
COLUMNS = SourceColumns(customer_id="cust_no", product_id="sku", quantity="qty", event_ts="sold_at",
                        basket_id="order_no", unit_price="price")
SOURCE = IngestSourceConfig(format="parquet", path="/unused", columns=COLUMNS)


def coerce(spark, rows, source=SOURCE, schema=ORDERS_SCHEMA):
    return coerce_source(spark.createDataFrame(rows, schema), source, IngestConfig(), "parquet:/orders", "f" * 64)


def outcomes(classified):
    return classified.select("raw_customer_id", "reason").orderBy("raw_customer_id")


def test_each_bad_row_gets_one_reason_and_a_detail_naming_the_field_and_column(spark):
    rows = [
        ("1", "apple ", "1.5", "2024-03-01 10:00:00", "B1", 0.5),   # kept
        ("2", "APPLE", "lots", "2024-03-01 10:00:00", "B2", 0.5),   # quantity not a number
        ("3", "APPLE", "NaN", "2024-03-01 10:00:00", "B3", 0.5),    # quantity not finite
        ("4", "APPLE", "0", "2024-03-01 10:00:00", "B4", 0.5),      # non-positive
        ("5", "APPLE", "1", "yesterday", "B5", 0.5),                # unparseable timestamp
        ("6", None, "1", "2024-03-01 10:00:00", "B6", 0.5),         # no product
        ("7x", "APPLE", "1", "2024-03-01 10:00:00", "B7", 0.5),     # not an id
        ("8", "APPLE", "1", "2024-03-01 10:00:00", "B8", -1.0),     # non-positive price
        ("9", "APPLE", "1", "1900-01-01 00:00:00", "B9", 0.5),      # before event_date_min
        (None, "APPLE", "1", "2024-03-01 10:00:00", "B0", 0.5),     # no customer
    ]
    classified = coerce(spark, rows)
    expected = spark.createDataFrame([
        (None, "missing_customer"), ("1", None), ("2", "unparsable_value"), ("3", "unparsable_value"),
        ("4", "non_positive_quantity"), ("5", "unparsable_value"), ("6", "unparsable_value"),
        ("7x", "unparsable_value"), ("8", "non_positive_price"), ("9", "out_of_range_value"),
    ], "raw_customer_id string, reason string")
    assert_df_equality(outcomes(classified), expected, ignore_nullable=True)
    details = {r["raw_customer_id"]: r["detail"] for r in classified.collect()}
    assert details["2"] == "unparsable: quantity (column qty) is missing or not a number"
    assert details["3"] == "unparsable: quantity (column qty) is not a finite number"
    assert "event_ts (column sold_at) is missing or not a timestamp" in details["5"]
    assert details["6"] == "unparsable: product_id (column sku) is missing"
    assert "customer_id (column cust_no) is not an integer id" in details["7x"]
    assert details[None] == "customer_id (column cust_no) is empty"


def test_a_kept_row_is_typed_as_purchase_events_with_a_fractional_quantity(spark):
    classified = coerce(spark, [("017850.0", " apple ", "1.5", "2024-03-01 10:00:00", " B1 ", 0.5)])
    kept = classified.select("customer_id", "product_id", "quantity", "event_ts", "invoice_no", "unit_price",
                             "product_title", "country")
    expected = spark.createDataFrame(
        [("17850", "APPLE", 1.5, dt.datetime(2024, 3, 1, 10), "B1", 0.5, None, None)],
        "customer_id string, product_id string, quantity double, event_ts timestamp, invoice_no string, "
        "unit_price double, product_title string, country string")
    assert_df_equality(kept, expected, ignore_nullable=True)


def test_typed_source_columns_are_coerced_without_text_round_trips(spark):
    schema = "cust_no long, sku long, qty float, sold_at timestamp, order_no long, price double"
    source = IngestSourceConfig(format="delta", path="/unused", columns=COLUMNS)
    classified = coerce(spark, [(17850, 85123, 0.25, dt.datetime(2024, 3, 1), 1, 2.0)], source, schema)
    row = classified.first()
    assert (row["customer_id"], row["product_id"], row["quantity"], row["invoice_no"], row["reason"]) == \
        ("17850", "85123", 0.25, "1", None)


def test_a_nan_customer_in_a_float_column_is_quarantined_not_kept_as_customer_zero(spark):
    schema = "cust_no double, sku string, qty double, sold_at timestamp, order_no string, price double"
    classified = coerce(spark, [(float("nan"), "A", 1.0, dt.datetime(2024, 3, 1), "B1", 1.0),
                                (1001.0, "A", 1.0, dt.datetime(2024, 3, 1), "B2", 1.0)], SOURCE, schema)
    assert sorted((r["customer_id"] or "", r["reason"] or "") for r in classified.collect()) == \
        [("", "unparsable_value"), ("1001", "")]


def test_unmapped_optional_columns_are_null(spark):
    source = IngestSourceConfig(format="parquet", path="/unused", columns=SourceColumns(
        customer_id="cust_no", product_id="sku", quantity="qty", event_ts="sold_at"))
    row = coerce(spark, [("1", "A", "2", "2024-03-01 10:00:00", "B1", 0.0)], source).first()
    # price 0.0 is not mapped, so it is no reason to quarantine the row
    assert (row["reason"], row["unit_price"], row["invoice_no"], row["product_title"], row["country"]) == \
        (None, None, None, None, None)


def test_identical_rows_keep_one_and_quarantine_the_others_as_duplicates(spark):
    row = ("1", "A", "2", "2024-03-01 10:00:00", "B1", 1.0)
    classified = coerce(spark, [row, row, row])
    reasons = sorted((r["reason"] or "") for r in classified.collect())
    assert reasons == ["", "duplicate_line", "duplicate_line"]
    # every row, duplicates included, has its own quarantine key
    assert classified.select("line_number").distinct().count() == 3


def test_ranking_only_the_repeated_keys_marks_the_same_rows_as_ranking_every_row(spark, monkeypatch):
    """The fast path (rows whose key is alone skip the sort) and the slow one (every row ranked,
    taken when too many keys repeat to broadcast) give every row the same reason and line."""
    from persona_lib import ingest_sources

    repeated = ("1", "A", "2", "2024-03-01 10:00:00", "B1", 1.0)
    rows = [repeated, repeated, ("2", "B", "0", "2024-03-02 10:00:00", "B2", 1.0),
            ("2", "B", "0", "2024-03-02 10:00:00", "B2", 1.0), ("3", "C", "1", "2024-03-03 10:00:00", "B3", 1.0)]
    columns = ["raw_customer_id", "event_id", "line_number", "reason", "detail"]
    ranked_where_repeated = coerce(spark, rows).select(*columns)
    monkeypatch.setattr(ingest_sources, "REPEATED_KEYS_BROADCAST_LIMIT", 0)
    every_row_ranked = coerce(spark, rows).select(*columns)
    assert_df_equality(ranked_where_repeated, every_row_ranked, ignore_row_order=True)
    assert sorted(r["reason"] or "" for r in every_row_ranked.collect()) == \
        ["", "", "duplicate_line", "non_positive_quantity", "non_positive_quantity"]


def test_rows_with_keys_of_their_own_are_each_the_first_occurrence(spark):
    rows = [("1", "A", "2", "2024-03-01 10:00:00", "B1", 1.0), ("2", "B", "1", "2024-03-02 10:00:00", "B2", 1.0)]
    classified = coerce(spark, rows)
    expected = classified.select("event_id", (F.xxhash64("event_id", F.lit(1)).bitwiseAND(F.lit((1 << 63) - 1)))
                                 .alias("line_number"), F.lit(None).cast("string").alias("reason"))
    assert_df_equality(classified.select("event_id", "line_number", "reason"), expected,
                       ignore_row_order=True, ignore_nullable=True)


def test_event_ids_come_from_the_content_so_a_reread_gives_the_same_ids(spark):
    rows = [("1", "A", "2", "2024-03-01 10:00:00", "B1", 1.0), ("2", "B", "1", "2024-03-02 10:00:00", "B2", 1.0)]
    first = coerce(spark, rows).select("event_id", "line_number")
    again = coerce(spark, list(reversed(rows))).select("event_id", "line_number")
    assert_df_equality(first, again, ignore_row_order=True)


def test_a_declared_key_makes_a_corrected_row_the_same_event(spark):
    source = IngestSourceConfig(format="parquet", path="/unused", columns=COLUMNS, key=("order_no", "sku"))
    before = coerce(spark, [("1", "A", "2", "2024-03-01 10:00:00", "B1", 1.0)], source).first()
    corrected = coerce(spark, [("1", "A", "3", "2024-03-01 10:00:00", "B1", 1.0)], source).first()
    assert before["event_id"] == corrected["event_id"]
    assert (before["quantity"], corrected["quantity"]) == (2.0, 3.0)


def test_a_title_mapped_to_several_columns_joins_them(spark):
    schema = ORDERS_SCHEMA + ", kind string, brand string"
    source = IngestSourceConfig(format="parquet", path="/unused", columns=SourceColumns(
        customer_id="cust_no", product_id="sku", quantity="qty", event_ts="sold_at", title=("kind", "brand")))
    row = coerce(spark, [("1", "A", "2", "2024-03-01 10:00:00", "B1", 1.0, "Bananas", "Chiquita")],
                 source, schema).first()
    assert row["product_title"] == "Bananas Chiquita"


def test_a_mapped_column_missing_from_the_source_names_the_key_and_column(spark):
    source = IngestSourceConfig(format="parquet", path="/unused", columns=SourceColumns(
        customer_id="cust_no", product_id="item", quantity="qty", event_ts="sold_at"))
    with pytest.raises(InputError, match=r"ingest.source.columns.product_id: column 'item' is not in the source"):
        coerce(spark, [("1", "A", "2", "2024-03-01 10:00:00", "B1", 1.0)], source)


def test_a_timestamp_pattern_parses_text_timestamps(spark):
    source = IngestSourceConfig(format="csv", path="/unused", columns=COLUMNS, timestamp_format="dd/MM/yyyy HH:mm")
    classified = coerce(spark, [("1", "A", "2", "01/03/2024 10:00", "B1", 1.0)], source)
    assert classified.select(F.col("event_ts")).first()[0] == dt.datetime(2024, 3, 1, 10)


def test_only_quarantined_rows_keep_their_raw_text_for_the_cache(spark):
    rows = [("1", "APPLE", "1", "2024-03-01 10:00:00", "B1", 0.5),     # kept
            ("2", "APPLE", "lots", "2024-03-01 10:00:00", "B2", 0.5),  # quarantined
            ("3", "APPLE", "2", "2024-03-01 10:00:00", "B3", 0.5)]     # forgotten
    classified = coerce(spark, rows).withColumn("forgotten", F.col("customer_id") == "3")
    slim = raw_text_of_quarantined_only(classified)
    assert slim.columns == classified.columns
    shown = slim.select("customer_id", F.col("raw_line").contains('"qty":"lots"').alias("raw_line_shown"),
                        "raw_quantity", "raw_basket_id", "product_id", "reason").orderBy("customer_id")
    expected = spark.createDataFrame([
        ("1", None, None, None, "APPLE", None),
        ("2", True, "lots", "B2", "APPLE", "unparsable_value"),
        ("3", None, None, None, "APPLE", None),
    ], "customer_id string, raw_line_shown boolean, raw_quantity string, raw_basket_id string, "
       "product_id string, reason string")
    assert_df_equality(shown, expected, ignore_nullable=True)
