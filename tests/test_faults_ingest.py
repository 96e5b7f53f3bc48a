"""Ingest faults: every defect an adversarial trial of the ingest found, reproduced
through the ``personas`` command on small landing files written here, then the rules of the
record reader and the file planner on plain strings, without Spark.

Each CLI test failed on the line-based reader that came before: re-deliveries doubled events, a changed
file left stale rows, NaN/1e308/year-9999 values and "1e4" ids were kept, quoted line breaks
split records, one bad file blocked the batch, a half-written run left orphan events, and bad
table names or labelling settings were only noticed after Spark had started and written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import yaml
from chispa import assert_df_equality
from pyspark.sql import functions as F

from persona_lib import contracts, storage
from persona_lib.config import REPO_ROOT, load_config, table_name_problem
from persona_lib.ingest import FileSeen, ingest, plan_files
from persona_lib.ingest_files import CSV_FIELD_LIMIT, open_content, parse_customer_id, split_records
from tests.cli_runner import run_personas
from tests.landing_files import HEADER, write_landing_file

TEST_CONF = REPO_ROOT / "conf" / "test.yaml"
INGEST_TABLES = ("purchase_events", "products", "quarantine", "ingest_log")


def line(invoice: str, code: str = "22633", title: str = "HAND WARMER", quantity: str = "6",
         date: str = "2010-12-01 08:28:00", price: str = "1.85", customer: str = "13047.0",
         country: str = "United Kingdom") -> str:
    return ",".join((invoice, code, title, quantity, date, price, customer, country))


@dataclass
class CliResult:
    code: int
    summary: Optional[dict]
    stderr: str


def personas(*args: str) -> subprocess.CompletedProcess:
    # In this process, on the shared session (tests/cli_runner.py): the same parsing, handlers and
    # error handling as the console script, without a JVM start per command.
    return run_personas(*args, cwd=REPO_ROOT)


def ingest_cli(workdir: Path, landing: Path, conf: Path = TEST_CONF) -> CliResult:
    result = personas("ingest", "--conf", str(conf), "--workdir", str(workdir), "--landing", str(landing), "--quiet")
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else None
    return CliResult(result.returncode, summary, result.stderr)


def write_conf(path: Path, overrides: dict) -> Path:
    path.write_text(yaml.safe_dump({"base": str(TEST_CONF), **overrides}))
    return path


def table(spark, config, key: str):
    return storage.resolve_tables(config).get(key).read(spark)


def versions(spark, config) -> dict:
    return {key: storage.resolve_tables(config).get(key).version(spark) for key in INGEST_TABLES}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def landing_text(lines: list[str]) -> str:
    return "\n".join([HEADER, *lines]) + "\n"


# ----------------------------------------------------------------- defect 1: ingest identity


def test_the_same_content_under_a_new_name_is_skipped_and_commits_nothing(spark, tmp_path):
    landing, work = tmp_path / "landing", tmp_path / "work"
    records = [line("536401"), line("536402", customer=""), line("536403", code="22745")]
    write_landing_file(landing, "day1.csv", records)
    assert ingest_cli(work, landing).code == 0
    config = load_config(TEST_CONF, workdir=str(work))
    before = versions(spark, config)

    write_landing_file(landing, "day1_resent.csv.gz", records)  # same content, new name, gzipped
    again = ingest_cli(work, landing)

    assert again.code == 0, again.stderr
    assert (again.summary["files_skipped"], again.summary["files_ingested"], again.summary["rows_in"]) == (2, 0, 0)
    assert versions(spark, config) == before
    assert table(spark, config, "purchase_events").count() == 2
    manifest = [(r.source_file, r.status, r.rows_in, r.rows_kept, r.rows_quarantined)
                for r in table(spark, config, "ingest_log").collect()]
    assert manifest == [("day1.csv", "ingested", 3, 2, 1)]


def test_a_changed_file_under_a_known_name_is_rejected_unless_replace_is_configured(spark, tmp_path):
    landing, work = tmp_path / "landing", tmp_path / "work"
    write_landing_file(landing, "day1.csv", [line("536401"), line("536402", price="x"), line("536403")])
    assert ingest_cli(work, landing).code == 0
    config = load_config(TEST_CONF, workdir=str(work))
    events_before = table(spark, config, "purchase_events").select("event_id")

    corrected = [line("536401"), line("536402", price="2.10"), line("536403"), line("536404", code="22745")]
    write_landing_file(landing, "day1.csv", corrected)
    rejected = ingest_cli(work, landing)

    assert rejected.code == 3
    assert [(f["file"], f["status"]) for f in rejected.summary["files_failed"]] == [("day1.csv", "conflicting_redelivery")]
    assert "day1.csv" in rejected.stderr
    assert_df_equality(table(spark, config, "purchase_events").select("event_id"), events_before,
                       ignore_row_order=True)

    replaced = ingest_cli(work, landing, write_conf(tmp_path / "replace.yaml", {"ingest": {"on_changed_file": "replace"}}))

    assert replaced.code == 0, replaced.stderr
    assert replaced.summary["files_replaced"] == 1
    new_content = sha256_text(landing_text(corrected))
    events = table(spark, config, "purchase_events")
    assert sorted(r.invoice_no for r in events.collect()) == ["536401", "536402", "536403", "536404"]
    assert {r.content_sha256 for r in events.collect()} == {new_content}
    assert table(spark, config, "quarantine").count() == 0  # the stale unparsable row went with its content
    statuses = {r.content_sha256: (r.status, r.rows_kept) for r in table(spark, config, "ingest_log").collect()}
    assert statuses[new_content] == ("ingested", 4)
    assert sorted(s for s, _ in statuses.values()) == ["ingested", "replaced"]


def test_a_line_delivered_again_inside_another_file_is_a_duplicate_of_the_ingested_event(spark, config, tmp_path):
    landing = tmp_path / "landing"
    write_landing_file(landing, "day2.csv", [line("536401"), line("536402")])
    ingest(spark, config, landing=str(landing))
    # A later file whose name sorts first repeats one purchase: the ingested event stays the
    # first occurrence, so the new line is the duplicate and nothing is both kept and quarantined.
    write_landing_file(landing, "day1.csv", [line("536401"), line("536403")])
    summary = ingest(spark, config, landing=str(landing))

    assert (summary["files_ingested"], summary["files_skipped"], summary["quarantined"]["duplicate_line"]) == (1, 1, 1)
    rows = table(spark, config, "quarantine").collect()
    assert [(r.source_file, r.line_number, r.reason, r.detail) for r in rows] == [
        ("day1.csv", 2, "duplicate_line", "the same purchase as day2.csv:2")]
    events = table(spark, config, "purchase_events")
    assert sorted((r.source_file, r.invoice_no) for r in events.collect()) == [
        ("day1.csv", "536403"), ("day2.csv", "536401"), ("day2.csv", "536402")]


# ------------------------------------------------ defects 2-4: one delivery with every bad file


VALUES = [
    line("536501", customer="9007199254740993.0"),        # 2 kept: a 16-digit id, exact
    line("536502", price="NaN"),                          # 3
    line("536503", price="Infinity"),                     # 4
    line("536504", price="1e308"),                        # 5
    line("536505", date="9999-12-31 10:00:00"),           # 6
    line("536506", date="0001-01-01 10:00:00"),           # 7
    line("536507", customer="1e4"),                       # 8
    line("536508", customer="17850.0"),                   # 9 kept
]
QUOTED = [
    line("536601", title='"HAND WARMER\nRED, LARGE"'),    # 2-3: a line break and a comma inside quotes
    line("536602", title="HAND\u2028WARMER"),             # 4
    line("536603", title="HAND\u0085WARMER"),             # 5
    line("536604", title='"HEART ""LOVE"" SIGN"'),        # 6
]
GOOD_GZIP = gzip.compress(landing_text([line("536701")]).encode(), mtime=0)


@pytest.fixture(scope="module")
def bad_delivery(tmp_path_factory):
    """One landing folder holding a file for each fault, ingested once through the CLI."""
    root = tmp_path_factory.mktemp("bad-delivery")
    landing, work = root / "landing", root / "work"
    write_landing_file(landing, "values.csv", VALUES)
    (landing / "quoted.csv").write_bytes(landing_text(QUOTED).encode("utf-8"))
    (landing / "excel.csv").write_bytes(b"\xef\xbb\xbf" + landing_text([line("536801")]).encode("utf-8"))
    write_landing_file(landing, "huge.csv", [line("536901"), line("536902", title="A" * 1_048_576), line("536903")])
    write_landing_file(landing, "header_only.csv", [])
    (landing / "corrupt.csv.gz").write_bytes(GOOD_GZIP[:10] + b"\xff" * 20 + GOOD_GZIP[30:])
    (landing / "truncated.csv.gz").write_bytes(GOOD_GZIP[: len(GOOD_GZIP) // 2])
    (landing / "empty.csv").write_bytes(b"")
    (landing / "latin1.csv").write_bytes(landing_text([line("537001", title="CAFÉ BOWL")]).encode("latin-1"))
    result = ingest_cli(work, landing)
    return result, load_config(TEST_CONF, workdir=str(work))


def quarantined(spark, config, source_file: str):
    return (table(spark, config, "quarantine").where(F.col("source_file") == source_file)
            .select("line_number", "reason").orderBy("line_number"))


def manifest_row(spark, config, source_file: str):
    rows = table(spark, config, "ingest_log").where(F.col("source_file") == source_file).collect()
    assert len(rows) == 1, rows
    return rows[0]


def test_non_finite_and_out_of_range_values_are_quarantined_with_a_reason(spark, bad_delivery):
    _, config = bad_delivery
    expected = spark.createDataFrame(
        [(3, "unparsable_value"), (4, "unparsable_value"), (5, "out_of_range_value"),
         (6, "out_of_range_value"), (7, "out_of_range_value"), (8, "unparsable_value")],
        "line_number long, reason string")
    assert_df_equality(quarantined(spark, config, "values.csv"), expected, ignore_nullable=True)
    details = {r.line_number: r.detail for r in table(spark, config, "quarantine").collect()
               if r.source_file == "values.csv"}
    assert "not a finite number" in details[3] and "unit_price_max" in details[5]
    assert "event_date_min" in details[6] and "CustomerID" in details[8]


def test_customer_ids_are_parsed_as_text_never_through_float(spark, bad_delivery):
    _, config = bad_delivery
    ids = {r.customer_id for r in table(spark, config, "purchase_events")
           .where(F.col("source_file") == "values.csv").collect()}
    assert ids == {"9007199254740993", "17850"}


def test_quoted_line_breaks_and_unicode_separators_stay_inside_their_record(spark, bad_delivery):
    _, config = bad_delivery
    row = manifest_row(spark, config, "quoted.csv")
    assert (row.status, row.rows_in, row.rows_kept) == ("ingested", 4, 4)
    events = table(spark, config, "purchase_events").where(F.col("source_file") == "quoted.csv")
    assert sorted((r.line_number, r.product_title) for r in events.collect()) == [
        (2, "HAND WARMER\nRED, LARGE"), (4, "HAND\u2028WARMER"), (5, "HAND\u0085WARMER"), (6, 'HEART "LOVE" SIGN')]


def test_an_excel_export_with_a_byte_order_mark_is_ingested(spark, bad_delivery):
    _, config = bad_delivery
    row = manifest_row(spark, config, "excel.csv")
    assert (row.status, row.rows_kept) == ("ingested", 1)


def test_unreadable_files_are_recorded_with_a_reason_and_the_others_are_committed(spark, bad_delivery):
    result, config = bad_delivery
    assert result.code == 3
    failed = {f["file"]: f["detail"] for f in result.summary["files_failed"]}
    assert sorted(failed) == ["corrupt.csv.gz", "empty.csv", "latin1.csv", "truncated.csv.gz"]
    for name in failed:
        assert name in result.stderr
    reasons = {name: manifest_row(spark, config, name) for name in failed}
    assert {r.status for r in reasons.values()} == {"failed"}
    assert "gzip" in reasons["corrupt.csv.gz"].detail and "gzip" in reasons["truncated.csv.gz"].detail
    assert "empty" in reasons["empty.csv"].detail
    assert "not UTF-8" in reasons["latin1.csv"].detail and "0xc9" in reasons["latin1.csv"].detail
    assert result.summary["files_ingested"] == 5


def test_a_megabyte_field_is_quarantined_with_a_sensible_detail(spark, bad_delivery):
    _, config = bad_delivery
    rows = table(spark, config, "quarantine").where(F.col("source_file") == "huge.csv").collect()
    assert [(r.line_number, r.reason) for r in rows] == [(3, "malformed_line")]
    assert rows[0].detail == f"a field is longer than {CSV_FIELD_LIMIT} characters (the CSV field limit)"
    assert manifest_row(spark, config, "huge.csv").rows_kept == 2


def test_a_header_only_file_gets_a_manifest_row(spark, bad_delivery):
    _, config = bad_delivery
    row = manifest_row(spark, config, "header_only.csv")
    assert (row.status, row.rows_in, row.rows_kept, row.rows_quarantined) == ("ingested", 0, 0, 0)


def test_the_manifest_matches_the_tables_for_every_content(spark, bad_delivery):
    _, config = bad_delivery
    manifest = table(spark, config, "ingest_log").where(F.col("status") == "ingested")
    kept = table(spark, config, "purchase_events").groupBy("content_sha256").agg(F.count(F.lit(1)).alias("kept"))
    held = table(spark, config, "quarantine").groupBy("content_sha256").agg(F.count(F.lit(1)).alias("held"))
    joined = manifest.join(kept, "content_sha256", "left").join(held, "content_sha256", "left").fillna(0)
    mismatched = joined.where((F.col("rows_kept") != F.col("kept")) | (F.col("rows_quarantined") != F.col("held"))
                              | (F.col("rows_in") != F.col("rows_kept") + F.col("rows_quarantined")
                                 + F.col("rows_forgotten")))
    assert manifest.count() == 5 and mismatched.count() == 0
    both = (table(spark, config, "purchase_events").select("content_sha256", "line_number")
            .intersect(table(spark, config, "quarantine").select("content_sha256", "line_number")))
    assert both.count() == 0


# ----------------------------------------------------------------- defect 5: partial writes


def test_a_half_written_ingest_is_reconciled_by_the_next_run(spark, tmp_path):
    landing, work = tmp_path / "landing", tmp_path / "work"
    write_landing_file(landing, "day1.csv", [line("536401"), line("536402", customer=""), line("536403", code="22745")])
    assert ingest_cli(work, landing).code == 0
    config = load_config(TEST_CONF, workdir=str(work))
    # What a run that died after its events commit leaves: no quarantine and no manifest row;
    # plus events of a content that no manifest row and no landing file accounts for.
    storage.resolve_tables(config).quarantine.delta(spark).delete()
    storage.resolve_tables(config).ingest_log.delta(spark).delete()
    events_ref = storage.resolve_tables(config).purchase_events
    orphan = events_ref.read(spark).limit(1).withColumn("event_id", F.lit("0" * 64)) \
        .withColumn("content_sha256", F.lit("f" * 64))
    storage.append(orphan, events_ref, contracts.PURCHASE_EVENTS)

    again = ingest_cli(work, landing)

    assert again.code == 0, again.stderr
    assert (again.summary["files_ingested"], again.summary["orphan_contents_removed"]) == (1, 1)
    assert sorted(r.invoice_no for r in table(spark, config, "purchase_events").collect()) == ["536401", "536403"]
    assert table(spark, config, "quarantine").count() == 1
    row = manifest_row(spark, config, "day1.csv")
    assert (row.status, row.rows_in, row.rows_kept, row.rows_quarantined) == ("ingested", 3, 2, 1)


@pytest.mark.parametrize("command, overrides, message", [
    ("ingest", {"tables": {"quarantine": "quarantine`; DROP TABLE x"}}, "tables.quarantine"),
    ("ingest", {"tables": {"purchase_events": "../../x"}}, "tables.purchase_events"),
    ("run", {"labelling": {"labeller": "gpt5"}}, "labelling.labeller"),
    ("run", {"labelling": {"taxonomy": "personas/nosuch.yaml"}}, "labelling.taxonomy: "),
    ("run", {"sampling": {"budget": -1}}, "sampling.budget"),
], ids=["backtick-table", "traversal-table", "labeller", "taxonomy", "budget"])
def test_bad_settings_exit_3_before_anything_is_written(spark, tmp_path, command, overrides, message):
    landing, work = tmp_path / "landing", tmp_path / "work"
    write_landing_file(landing, "day1.csv", [line("536401")])
    conf = write_conf(tmp_path / "bad.yaml", {**overrides, "ingest": {"landing": str(landing)}})

    result = personas(command, "--conf", str(conf), "--workdir", str(work))

    assert result.returncode == 3, result.stderr
    assert message in result.stderr
    assert not (work / "tables").exists() and not (tmp_path / "x").exists()


# ----------------------------------------------------------------- the reader, on strings


def test_a_quoted_field_may_hold_line_breaks_commas_and_quotes():
    text = 'a,b\n1,"two\nlines, really"\n"3 ""x""",4\r\n5,6'
    records = [(r.line_number, r.raw, r.fields, r.error) for r in split_records(text)]
    assert records == [
        (1, "a,b", ["a", "b"], None),
        (2, '1,"two\nlines, really"', ["1", "two\nlines, really"], None),
        (4, '"3 ""x""",4', ['3 "x"', "4"], None),
        (5, "5,6", ["5", "6"], None),
    ]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"])
def test_unicode_line_separators_are_field_content(separator):
    records = list(split_records(f"a,b\nx{separator}y,z\n"))
    assert [r.fields for r in records] == [["a", "b"], [f"x{separator}y", "z"]]


def test_an_unclosed_quote_is_one_malformed_record_to_the_end_of_the_file():
    records = list(split_records('a,b\n1,"open\n2,3\n'))
    assert [(r.line_number, r.fields) for r in records] == [(1, ["a", "b"]), (2, None)]
    assert "never closed" in records[1].error


def test_an_oversized_field_is_one_record_and_the_next_record_is_read():
    records = list(split_records("a,b\n1," + "x" * (CSV_FIELD_LIMIT + 1) + "\n2,3\n"))
    assert [(r.line_number, r.fields) for r in records] == [(1, ["a", "b"]), (2, None), (3, ["2", "3"])]
    assert str(CSV_FIELD_LIMIT) in records[1].error


def test_a_file_is_identified_by_its_content_whatever_its_name_or_compression():
    text = landing_text([line("536401")])
    plain = open_content("a.csv", text.encode())
    zipped = open_content("b.csv.gz", gzip.compress(text.encode(), mtime=1))
    with_bom = open_content("c.csv", b"\xef\xbb\xbf" + text.encode())
    assert plain.content_sha256 == zipped.content_sha256 == sha256_text(text)
    assert plain.text == zipped.text == with_bom.text == text


@pytest.mark.parametrize("name, content, problem", [
    ("a.csv.gz", GOOD_GZIP[:10] + b"\xff" * 20 + GOOD_GZIP[30:], "not a valid gzip file"),
    ("a.csv.gz", GOOD_GZIP[:40], "not a valid gzip file"),
    ("a.csv", b"", "empty"),
    ("a.csv", b"\xef\xbb\xbf\n", "empty"),
    ("a.csv", "InvoiceNo\nCAFÉ\n".encode("latin-1"), "not UTF-8 text: byte 0xc9 on line 2 (offset 13"),
])
def test_an_unreadable_file_is_a_reason_not_an_exception(name, content, problem):
    opened = open_content(name, content)
    assert opened.text is None and problem in opened.problem


@pytest.mark.parametrize("raw, expected", [
    ("17850.0", "17850"), ("17850", "17850"), (" 17850.00 ", "17850"), ("017850", "17850"), ("0", "0"),
    ("9007199254740993", "9007199254740993"), ("9007199254740993.0", "9007199254740993"),
    ("1e4", None), ("17850.5", None), ("-17850", None), ("", None), ("١٢٣", None), (None, None),
])
def test_customer_ids_are_digits_with_an_optional_point_zero(raw, expected):
    assert parse_customer_id(raw) == expected


def test_planning_skips_known_content_and_follows_on_changed_file():
    current = {"day1.csv": "h1", "day2.csv": "h2"}
    seen = [FileSeen("copy_of_day1.csv", "h1", "known"), FileSeen("day2.csv", "h2b", "read"),
            FileSeen("day3.csv", "h3", "read"), FileSeen("day3_again.csv", "h3", "read"),
            FileSeen("bad.csv", "h4", "failed", "not UTF-8 text")]
    rejecting = {a.name: (a.action, a.replaces) for a in plan_files(seen, current, "reject")}
    assert rejecting == {"bad.csv": ("fail", None), "copy_of_day1.csv": ("skip", None),
                         "day2.csv": ("conflict", None), "day3.csv": ("ingest", None),
                         "day3_again.csv": ("skip", None)}
    replacing = {a.name: (a.action, a.replaces) for a in plan_files(seen, current, "replace")}
    assert replacing["day2.csv"] == ("ingest", "h2")


@pytest.mark.parametrize("name, ok", [
    ("purchase_events", True), ("paper/purchase_events", True), ("main.personas.events", True),
    ("/mnt/x/events", True), ("s3://bucket/events", True), ("dbfs:/Volumes/a/b", True),
    ("events`x", False), ("../../x", False), ("a/../../x", False), ("s3://b/../x", False),
    ("main.personas.ev-ents", False), ("a.b.c.d", False), ("a b", False), ("x;drop", False), ("", False),
])
def test_table_names_are_identifiers_or_paths_that_stay_inside(name, ok):
    assert (table_name_problem(name) is None) == ok
