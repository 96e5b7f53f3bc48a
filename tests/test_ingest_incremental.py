"""Incremental loads of a mapped source (``ingest.source.incremental``): a watermark run reads
only rows at or after the newest ingested event less the lookback; a change_feed run applies
the Delta change data feed since the version the last run read (updates, deletes, inserts).
Neither deletes a row for being absent from what it read, every run balances (rows in = kept
+ quarantined + forgotten) and a re-run on unchanged data commits nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from chispa import assert_df_equality

from persona_lib import storage
from persona_lib.config import load_config
from persona_lib.errors import ConfigError
from persona_lib.ingest import ingest
from persona_lib.testing import TEST_CONF
from tests.cli_runner import run_personas

MAPPING = {"customer_id": "cust_no", "product_id": "sku", "quantity": "qty", "event_ts": "sold_at",
           "basket_id": "order_no"}
ORDERS_SCHEMA = "cust_no long, sku string, qty double, sold_at timestamp, order_no string"
EVENTS = "customer_id string, product_id string, quantity double"


def day(n: float) -> dt.datetime:
    return dt.datetime(2024, 3, 1) + dt.timedelta(days=n)


def write_conf(tmp_path: Path, source: dict) -> Path:
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "workdir": str(tmp_path / "work"),
                                    "ingest": {"source": {"columns": MAPPING, **source}}}))
    return conf


def events(spark, config):
    return (storage.resolve_tables(config).get("purchase_events").read(spark)
            .select("customer_id", "product_id", "quantity").orderBy("customer_id", "product_id"))


def versions(spark, config) -> dict:
    return {key: storage.resolve_tables(config).get(key).version(spark)
            for key in ("purchase_events", "quarantine", "ingest_log")}


def test_a_watermark_run_reads_late_rows_inside_the_lookback_and_never_deletes_what_it_did_not_read(
        spark, tmp_path):
    orders = str(tmp_path / "orders")
    first_rows = [(1, "A", 1.0, day(1), "O1"), (2, "B", 1.0, day(2), "O2"), (3, "C", 1.0, day(3), "O3")]
    spark.createDataFrame(first_rows, ORDERS_SCHEMA).write.format("delta").save(orders)
    config = load_config(write_conf(tmp_path, {"format": "delta", "path": orders, "incremental": "watermark",
                                               "watermark_lookback_hours": 24}))
    first = ingest(spark, config)
    assert (first["rows_in"], first["rows_kept"], first["read_from"]) == (3, 3, None)

    # Day 1's row is withdrawn upstream; a new day-5 row, a late row inside the lookback (day
    # 2.5 >= day 3 - 24 h) and one outside it (day 1.5) arrive.
    later = [(2, "B", 1.0, day(2), "O2"), (3, "C", 1.0, day(3), "O3"), (4, "D", 2.0, day(5), "O4"),
             (5, "E", 1.0, day(2.5), "O5"), (6, "F", 1.0, day(1.5), "O6")]
    spark.createDataFrame(later, ORDERS_SCHEMA).write.format("delta").mode("overwrite").save(orders)
    second = ingest(spark, config)
    # Read: days 2, 3, 5 and 2.5 (at or after day 2); day 1.5 waits for a full load.
    assert (second["rows_in"], second["rows_kept"], second["read_from"]) == (4, 4, "2024-03-03 00:00:00")
    expected = spark.createDataFrame([("1", "A", 1.0), ("2", "B", 1.0), ("3", "C", 1.0), ("4", "D", 2.0),
                                      ("5", "E", 1.0)], EVENTS)
    assert_df_equality(events(spark, config), expected, ignore_nullable=True)

    before = versions(spark, config)
    again = ingest(spark, config)
    assert again["rows_in"] == 1  # the lookback now starts at day 4: only day 5's row
    assert versions(spark, config) == before  # nothing new: no table committed


def test_a_change_feed_run_applies_updates_deletes_and_inserts_since_the_last_version(spark, tmp_path):
    orders = str(tmp_path / "orders")
    rows = [(1, "A", 1.0, day(1), "O1"), (2, "B", 1.0, day(1), "O2"), (3, "C", 1.0, day(1), "O3")]
    (spark.createDataFrame(rows, ORDERS_SCHEMA).write.format("delta")
     .option("delta.enableChangeDataFeed", "true").save(orders))
    config = load_config(write_conf(tmp_path, {"format": "delta", "path": orders, "incremental": "change_feed",
                                               "key": ["order_no", "sku"]}))
    first = ingest(spark, config)
    assert (first["rows_in"], first["source_version"], first["source_version_from"]) == (3, 0, None)

    source = storage.TableRef("orders", orders, is_catalog=False).delta(spark)
    source.update("order_no = 'O1'", {"qty": "2.5"})           # version 1: a corrected line
    source.delete("order_no = 'O2'")                           # version 2: a withdrawn line
    spark.createDataFrame([(4, "D", 1.0, day(2), "O4"), (None, "E", 1.0, day(2), "O5")], ORDERS_SCHEMA) \
        .write.format("delta").mode("append").save(orders)     # version 3: a new line and a bad one
    second = ingest(spark, config)
    assert (second["source_version_from"], second["source_version"]) == (0, 3)
    # Read: O1's new image, O4 and O5 (quarantined); O2 deleted.
    assert (second["rows_in"], second["rows_kept"], second["quarantined"], second["rows_deleted"]) == \
        (3, 2, {"missing_customer": 1}, 1)
    expected = spark.createDataFrame([("1", "A", 2.5), ("3", "C", 1.0), ("4", "D", 1.0)], EVENTS)
    assert_df_equality(events(spark, config), expected, ignore_nullable=True)
    log = storage.resolve_tables(config).get("ingest_log").read(spark).select("rows_in", "rows_kept", "rows_quarantined",
                                                                     "source_version")
    assert [tuple(r) for r in log.collect()] == [(3, 2, 1, 3)]

    before = versions(spark, config)
    again = ingest(spark, config)
    assert (again["rows_in"], again["rows_deleted"], again["source_version"]) == (0, 0, 3)
    assert versions(spark, config) == before


def test_change_feed_on_a_parquet_source_is_a_config_error_naming_the_key(tmp_path):
    conf = write_conf(tmp_path, {"format": "parquet", "path": str(tmp_path), "incremental": "change_feed"})
    with pytest.raises(ConfigError, match="ingest.source.incremental: change_feed reads a Delta change data feed"):
        load_config(conf)


def test_a_source_without_a_change_feed_fails_through_the_cli_naming_the_setting(spark, tmp_path):
    orders = str(tmp_path / "orders")
    spark.createDataFrame([(1, "A", 1.0, day(1), "O1")], ORDERS_SCHEMA).write.format("delta").save(orders)
    conf = write_conf(tmp_path, {"format": "delta", "path": orders, "incremental": "change_feed"})
    first = ingest(spark, load_config(conf))  # a first run reads the table as it is
    assert first["rows_kept"] == 1
    spark.createDataFrame([(2, "B", 1.0, day(2), "O2")], ORDERS_SCHEMA).write.format("delta").mode("append") \
        .save(orders)

    result = run_personas("ingest", "--conf", str(conf), "--quiet")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "cannot read the change data feed of " + orders in result.stderr
    assert "delta.enableChangeDataFeed = true" in result.stderr
    # Nothing was written: the one event of the first run is all there is.
    assert storage.resolve_tables(load_config(conf)).get("purchase_events").read(spark).count() == 1
    assert not result.stdout.strip()  # no summary: the run failed before writing
