"""Ingestion: every landing line is kept or quarantined with exactly one reason, idempotently."""

from __future__ import annotations

import hashlib

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from persona_lib import storage
from persona_lib.errors import InputError
from persona_lib.ingest import event_table_sizes, ingest
from persona_lib.tombstones import customer_hash, tombstone_key
from tests.landing_files import HEADER, write_landing_file
from tests.spark_modes import generated_code

GOOD = "536365,85123a ,WHITE HANGING HEART T-LIGHT HOLDER ,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom"


def quarantine_reasons(spark, config):
    return (storage.resolve_tables(config).quarantine.read(spark)
            .select("source_file", "line_number", "reason").orderBy("line_number"))


def test_each_bad_line_is_quarantined_with_exactly_one_reason(spark, config, tmp_path):
    landing = tmp_path / "landing"
    write_landing_file(landing, "day1.csv", [
        GOOD,                                                                                   # 2 kept
        "536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,,United Kingdom",                  # 3
        "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom",                # 4
        "536367,22745,POPPY'S PLAYHOUSE,0,2010-12-01 08:34:00,2.1,13047.0,United Kingdom",     # 5
        "536368,22960,JAM MAKING SET,6,2010-12-01 08:34:00,0.0,13047.0,United Kingdom",         # 6
        "536369,POST,POSTAGE,3,2010-12-01 08:35:00,18.0,12583.0,France",                        # 7
        "536370,22728,ALARM CLOCK,lots,2010-12-01 08:45:00,3.75,12583.0,France",                # 8
        "536371,22728,ALARM CLOCK,4,2010-12-01 08:45:00",                                       # 9
        GOOD,                                                                                   # 10 dup
        "536372,22728,ALARM CLOCK,4,2010-12-01 08:45:00,3.75,12x83,France",                     # 11
    ])
    summary = ingest(spark, config, landing=str(landing))

    expected = spark.createDataFrame(
        [("day1.csv", 3, "missing_customer"), ("day1.csv", 4, "cancellation"),
         ("day1.csv", 5, "non_positive_quantity"), ("day1.csv", 6, "non_positive_price"),
         ("day1.csv", 7, "non_product_code"), ("day1.csv", 8, "unparsable_value"),
         ("day1.csv", 9, "malformed_line"), ("day1.csv", 10, "duplicate_line"),
         ("day1.csv", 11, "unparsable_value")],
        "source_file string, line_number long, reason string",
    )
    assert_df_equality(quarantine_reasons(spark, config), expected, ignore_nullable=True)
    assert summary["rows_in"] == 10 and summary["rows_kept"] == 1
    assert sum(summary["quarantined"].values()) == 9


def test_kept_line_is_normalised_to_the_contract(spark, config, tmp_path):
    landing = tmp_path / "landing"
    write_landing_file(landing, "day1.csv.gz", [GOOD])
    ingest(spark, config, landing=str(landing))

    events = storage.resolve_tables(config).purchase_events.read(spark)
    # The key comes from the file's content (hashed after gunzip) and the record's line, not its name.
    content_sha256 = hashlib.sha256(f"{HEADER}\n{GOOD}\n".encode()).hexdigest()
    expected_id = hashlib.sha256(f"{content_sha256}:2".encode()).hexdigest()
    actual = events.select("event_id", "customer_id", "product_id", "product_title", "quantity",
                           "unit_price", F.date_format("event_ts", "yyyy-MM-dd HH:mm:ss").alias("ts"))
    expected = spark.createDataFrame(
        [(expected_id, "17850", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6.0, 2.55, "2010-12-01 08:26:00")],
        "event_id string, customer_id string, product_id string, product_title string, "
        "quantity double, unit_price double, ts string",
    )
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_reingesting_overlapping_files_adds_only_the_new_file(spark, config, tmp_path):
    landing = tmp_path / "landing"
    write_landing_file(landing, "day1.csv", [GOOD])
    ingest(spark, config, landing=str(landing))
    write_landing_file(landing, "day2.csv", [GOOD.replace("536365", "536400")])
    summary = ingest(spark, config, landing=str(landing))

    events = storage.resolve_tables(config).purchase_events.read(spark)
    assert sorted(r.source_file for r in events.select("source_file").collect()) == ["day1.csv", "day2.csv"]
    # day1.csv's content is already ingested: skipped, not read again.
    assert (summary["files_skipped"], summary["rows_in"], summary["pairs"]) == (1, 1, 1)


def test_forgotten_customer_is_not_ingested_anywhere(spark, config, tmp_path):
    landing = tmp_path / "landing"
    write_landing_file(landing, "day1.csv", [
        GOOD, "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,17850.0,United Kingdom",
        "536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,13047.0,United Kingdom",
    ])
    tombstones = storage.resolve_tables(config).tombstones
    rows = spark.createDataFrame([(customer_hash("17850", tombstone_key(config.forget)),)], "customer_hash string") \
        .withColumn("forgotten_at", F.current_timestamp())
    from persona_lib import contracts
    storage.overwrite(rows, tombstones, contracts.TOMBSTONES)

    summary = ingest(spark, config, landing=str(landing))

    assert summary["forgotten"] == 2 and summary["rows_kept"] == 1
    quarantine = storage.resolve_tables(config).quarantine.read(spark)
    assert quarantine.where(F.col("raw_line").contains("17850")).count() == 0


@pytest.mark.parametrize(
    "make_files, message",
    [
        (lambda d: None, "landing folder not found"),
        (lambda d: d.mkdir(), "no landing file matched"),
    ],
    ids=["missing-folder", "empty-folder"],
)
def test_a_missing_or_empty_landing_folder_fails_naming_it(spark, config, tmp_path, make_files, message):
    landing = tmp_path / "landing"
    make_files(landing)
    with pytest.raises(InputError, match=message):
        ingest(spark, config, landing=str(landing))
    assert not storage.resolve_tables(config).purchase_events.exists(spark)


@pytest.mark.parametrize(
    "make_files, name, message",
    [
        (lambda d: write_landing_file(d, "bad.csv", [GOOD], header="Invoice,Code,Qty"), "bad.csv", "wrong columns"),
        (lambda d: (d.mkdir(), (d / "empty.csv").write_text("")), "empty.csv", "the file is empty"),
        (lambda d: (d.mkdir(), (d / "broken.csv.gz").write_bytes(b"not gzip")), "broken.csv.gz", "not a valid gzip"),
    ],
    ids=["wrong-columns", "empty-file", "bad-gzip"],
)
def test_a_bad_file_is_recorded_as_failed_naming_the_problem(spark, config, tmp_path, make_files, name, message):
    landing = tmp_path / "landing"
    make_files(landing)
    summary = ingest(spark, config, landing=str(landing))
    assert [(f["file"], f["status"]) for f in summary["files_failed"]] == [(name, "failed")]
    assert message in summary["files_failed"][0]["detail"]
    assert not storage.resolve_tables(config).purchase_events.exists(spark)
    log = storage.resolve_tables(config).ingest_log.read(spark).collect()
    assert [(r.source_file, r.status) for r in log] == [(name, "failed")] and message in log[0].detail


def test_paper_cut_keys_products_by_title_and_drops_listed_countries(spark, config, tmp_path):
    landing = tmp_path / "landing"
    write_landing_file(landing, "day1.csv", [
        GOOD,
        "536369,POST,POSTAGE,3,2010-12-01 08:35:00,0.0,12583.0,France",
        "536370,22728,ALARM CLOCK,4,2010-12-01 08:45:00,3.75,12583.0,EIRE",
    ])
    summary = ingest(spark, config, cut="paper", landing=str(landing))

    events = storage.resolve_tables(config).paper_purchase_events.read(spark).select("customer_id", "product_id")
    expected = spark.createDataFrame([("17850", "WHITE HANGING HEART T-LIGHT HOLDER"), ("12583", "POSTAGE")],
                                     "customer_id string, product_id string")
    assert_df_equality(events, expected, ignore_row_order=True, ignore_nullable=True)
    assert summary["quarantined"]["excluded_country"] == 1
    assert not storage.resolve_tables(config).purchase_events.exists(spark)


# ----------------------------------------------------------------- the bundled real data


@pytest.fixture(scope="module")
def real_config(tmp_path_factory):
    from persona_lib.config import load_config
    from persona_lib.testing import TEST_CONF

    return load_config(TEST_CONF, workdir=str(tmp_path_factory.mktemp("real-ingest")))


@pytest.fixture(scope="module")
def first_ingest(spark, real_config):
    with generated_code(spark):
        return ingest(spark, real_config)


@pytest.mark.slow
def test_real_data_quarantine_counts_per_reason(first_ingest):
    assert first_ingest["quarantined"] == {
        "malformed_line": 0, "unparsable_value": 0, "out_of_range_value": 0, "missing_customer": 135080,
        "cancellation": 8905,
        "non_positive_quantity": 0, "non_positive_price": 40, "non_product_code": 1547, "duplicate_line": 5187,
    }
    assert (first_ingest["customers"], first_ingest["products"], first_ingest["pairs"]) == (4334, 3659, 266221)


@pytest.mark.slow
def test_real_data_lines_in_equal_kept_plus_quarantined_per_file(spark, real_config, first_ingest):
    assert first_ingest["rows_in"] == 541909
    assert first_ingest["rows_in"] == first_ingest["rows_kept"] + sum(first_ingest["quarantined"].values())
    log = storage.resolve_tables(real_config).ingest_log.read(spark)
    unbalanced = log.where(F.col("rows_in") != F.col("rows_kept") + F.col("rows_quarantined") + F.col("rows_forgotten"))
    assert log.count() == 305 and unbalanced.count() == 0
    kept = storage.resolve_tables(real_config).purchase_events.read(spark).count()
    quarantined = storage.resolve_tables(real_config).quarantine.read(spark).count()
    assert kept + quarantined == 541909


@pytest.mark.slow
def test_real_data_second_ingest_changes_nothing(spark, real_config, first_ingest):
    tables = ("purchase_events", "products", "quarantine", "ingest_log")
    versions = {t: storage.resolve_tables(real_config).get(t).version(spark) for t in tables}
    second = ingest(spark, real_config)
    sizes = ("customers", "products", "pairs", "events")
    assert {k: second[k] for k in sizes} == {k: first_ingest[k] for k in sizes}
    # Every file's content is already ingested: all skipped, nothing read, nothing committed.
    assert (second["files_skipped"], second["files_ingested"], second["rows_in"]) == (305, 0, 0)
    assert {t: storage.resolve_tables(real_config).get(t).version(spark) for t in tables} == versions


@pytest.mark.slow
def test_paper_cut_reproduces_the_papers_counts(spark, real_config):
    with generated_code(spark):
        summary = ingest(spark, real_config, cut="paper")
    assert (summary["customers"], summary["products"], summary["pairs"]) == (4297, 3846, 263267)


def test_event_table_sizes_count_what_count_distinct_counts(spark):
    # Repeated pairs, a customer of one product, a product of many customers, several partitions.
    rows = [(f"c{c}", f"p{(c * p) % 7}") for c in range(40) for p in range(1 + c % 5)] + [("c1", "p0")] * 3
    events = spark.createDataFrame(rows, "customer_id string, product_id string").repartition(3)
    oracle = events.agg(
        F.countDistinct("customer_id").alias("customers"), F.countDistinct("product_id").alias("products"),
        F.countDistinct("customer_id", "product_id").alias("pairs"), F.count(F.lit(1)).alias("events"),
    ).first().asDict()

    assert event_table_sizes(events) == oracle
    assert event_table_sizes(events.limit(0)) == {"customers": 0, "products": 0, "pairs": 0, "events": 0}
