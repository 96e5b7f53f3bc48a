"""The line classifier (``ingest.classify_lines``) on CSV text written here: no landing
folder, no Delta table. Each line is cut by the file reader (``ingest.file_rows``) and
classified; the test reads the one reason it got (None: kept)."""

from __future__ import annotations

from persona_lib.ingest import REASONS, RECORDS_SCHEMA, classify_lines, cut_rules, file_rows
from tests.landing_files import HEADER

GOOD = "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom"

# (line, the reason the default cut gives it); the first reason that applies wins.
DEFAULT_CUT_LINES = [
    (GOOD, None),
    ("536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85", "malformed_line"),
    ("536367,22633,HAND WARMER,lots,2010-12-01 08:28:00,1.85,13047,France", "unparsable_value"),
    ("536367,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,1e4,France", "unparsable_value"),
    ("536367,22633,HAND WARMER,6,2010-12-01 08:28:00,NaN,13047,France", "unparsable_value"),
    ("536368,22633,HAND WARMER,6,9999-12-01 08:28:00,1.85,13047,France", "out_of_range_value"),
    ("536368,22633,HAND WARMER,6,2010-12-01 08:28:00,1e300,13047,France", "out_of_range_value"),
    ("536369,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,,France", "missing_customer"),
    ("C536369,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,,France", "missing_customer"),
    ("C536370,22633,HAND WARMER,-6,2010-12-01 08:28:00,1.85,13047,France", "cancellation"),
    ("536371,22633,HAND WARMER,0,2010-12-01 08:28:00,1.85,13047,EIRE", "non_positive_quantity"),
    ("536372,22633,HAND WARMER,6,2010-12-01 08:28:00,0.0,13047,France", "non_positive_price"),
    ("536373,POST,POSTAGE,3,2010-12-01 08:35:00,18.0,12583,France", "non_product_code"),
    (GOOD, "duplicate_line"),
    # Last: an unclosed quote makes one malformed record of the rest of the file.
    ('536366,22633,"HAND WARMER,6,2010-12-01 08:28:00,1.85,13047,France', "malformed_line"),
]


def classify(spark, config, lines, cut="default"):
    """{line number: reason} of ``lines`` (line 1 is the header, so the first is line 2)."""
    content = ("\n".join([HEADER, *lines]) + "\n").encode("utf-8")
    records = spark.createDataFrame(file_rows("day.csv", content), RECORDS_SCHEMA)
    classified = classify_lines(records, cut_rules(config, cut), config.ingest)
    return {row["line_number"]: row["reason"] for row in classified.select("line_number", "reason").collect()}


def test_each_line_gets_the_first_reason_that_applies_or_is_kept(spark, config):
    reasons = classify(spark, config, [line for line, _ in DEFAULT_CUT_LINES])
    assert reasons == {number: reason for number, (_, reason) in enumerate(DEFAULT_CUT_LINES, start=2)}


def test_every_reason_of_the_default_cut_is_exercised():
    # excluded_country belongs to the paper cut (next test).
    assert {r for _, r in DEFAULT_CUT_LINES if r} == set(REASONS) - {"excluded_country"}


def test_the_paper_cut_drops_listed_countries_and_keeps_what_production_drops(spark, config):
    lines = [
        "536371,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,13047,EIRE",
        "536372,22633,HAND WARMER,6,2010-12-01 08:28:00,0.0,13047,France",
        "536373,POST,POSTAGE,3,2010-12-01 08:35:00,18.0,12583,France",
        "C536370,22633,HAND WARMER,-6,2010-12-01 08:28:00,1.85,13047,France",
    ]
    assert classify(spark, config, lines, cut="paper") == {
        2: "excluded_country", 3: None, 4: None, 5: "cancellation"}


def test_a_kept_lines_customer_id_is_the_canonical_id(spark, config):
    raw_ids = {"17850.0": "17850", "017850": "17850", " 17851 ": "17851", "0": "0"}
    lines = [f"53636{i},85123A,HEART,6,2010-12-01 08:26:00,2.55,{raw},United Kingdom" for i, raw in enumerate(raw_ids)]
    content = ("\n".join([HEADER, *lines]) + "\n").encode("utf-8")
    records = spark.createDataFrame(file_rows("day.csv", content), RECORDS_SCHEMA)
    rows = classify_lines(records, cut_rules(config, "default"), config.ingest).orderBy("line_number").collect()
    assert [(r["reason"], r["customer_id"]) for r in rows] == [(None, canonical) for canonical in raw_ids.values()]
