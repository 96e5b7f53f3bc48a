"""``personas ingest`` on a retailer's own data, through the CLI only: a differently shaped
source (other column names, fractional quantities, a separate catalogue) read through
``ingest.source.columns``; bad rows quarantined with a reason naming the field; a re-run adds
nothing; a missing source is exit 3 naming the key and the path, never the demo data.

The sources are written with pyarrow and plain files; each command runs in this process on the
suite's shared session (tests/cli_runner.py), through the same parsing, handlers and errors as
the console script."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from persona_lib.testing import TEST_CONF
from tests.cli_runner import run_personas

MAPPING = {"customer_id": "cust_no", "product_id": "sku", "quantity": "qty", "event_ts": "sold_at",
           "unit_price": None, "basket_id": "order_no", "title": None, "country": None}


def personas(*args: str) -> subprocess.CompletedProcess:
    return run_personas(*args)


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_conf(tmp_path: Path, ingest: dict) -> Path:
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "workdir": str(tmp_path / "work"), "ingest": ingest}))
    return conf


def sql(conf: Path, statement: str) -> list[dict]:
    result = last_json(personas("sql", "--conf", str(conf), "--format", "json", "--quiet", statement))
    return [dict(zip(result["columns"], row)) for row in result["rows"]]


def at(hour: int) -> dt.datetime:
    return dt.datetime(2024, 3, 1, hour)


ORDERS = [  # cust_no, sku, qty, sold_at, order_no
    (1001, "ban-1", 0.75, at(9), "O1"),
    (1001, "MLK-2", 2.0, at(9), "O1"),
    (1002, "ban-1", 1.25, at(10), "O2"),
    (1002, "EGG-6", 1.0, at(10), "O2"),
    (1003, "MLK-2", 1.0, at(11), "O3"),
    (1003, "MLK-2", 1.0, at(11), "O3"),        # the same line twice: duplicate_line
    (None, "EGG-6", 1.0, at(12), "O4"),        # missing_customer
    (1004, "EGG-6", 0.0, at(12), "O5"),        # non_positive_quantity
    (1004, "ban-1", math.nan, at(12), "O5"),   # unparsable_value (quantity)
]


def write_orders(path: Path, rows=tuple(ORDERS)) -> Path:
    """A grocery export: integer households, SKUs, fractional quantities, baskets."""
    table = pa.table({
        "cust_no": pa.array([r[0] for r in rows], pa.int64()),
        "sku": pa.array([r[1] for r in rows], pa.string()),
        "qty": pa.array([r[2] for r in rows], pa.float64()),
        "sold_at": pa.array([r[3] for r in rows], pa.timestamp("us")),
        "order_no": pa.array([r[4] for r in rows], pa.string()),
        "store": pa.array(["S1"] * len(rows), pa.string()),  # not mapped: ignored
    })
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")
    return path


def write_catalogue(path: Path) -> Path:
    path.write_text("sku,kind,brand,category\nBAN-1,Bananas,Chiquita,Fruit\nMLK-2,Milk,Arla,Dairy\n"
                    "EGG-6,Eggs,Happy Hens,Dairy\nUNSOLD,Caviar,Beluga,Deli\n")
    return path


def test_a_parquet_source_with_a_catalogue_is_ingested_through_its_mapping_and_a_rerun_adds_nothing(spark, tmp_path):
    orders = write_orders(tmp_path / "orders")
    catalogue = write_catalogue(tmp_path / "catalogue.csv")
    conf = write_conf(tmp_path, {
        "source": {"format": "parquet", "path": str(orders), "columns": MAPPING, "key": ["order_no", "sku"]},
        "products": {"format": "csv", "path": str(catalogue),
                     "columns": {"product_id": "sku", "title": ["kind", "brand"], "group": "category"}},
    })

    first = last_json(personas("ingest", "--conf", str(conf), "--quiet"))
    assert (first["rows_in"], first["rows_kept"], first["events"], first["customers"]) == (9, 5, 5, 3)
    assert first["quarantined"] == {"duplicate_line": 1, "missing_customer": 1, "non_positive_quantity": 1,
                                    "unparsable_value": 1}
    assert first["source"] == f"parquet:{orders}"

    again = last_json(personas("ingest", "--conf", str(conf), "--quiet"))
    assert (again["rows_in"], again["rows_kept"], again["events"]) == (9, 5, 5)
    # Nothing added, changed or removed: no table got a new version.
    assert again["tables"] == first["tables"]

    # The retailer corrects a line (same basket and SKU) and withdraws another.
    corrected = [(1001, "ban-1", 0.5, at(9), "O1"), *ORDERS[1:3], *ORDERS[4:]]
    write_orders(orders, corrected)
    third = last_json(personas("ingest", "--conf", str(conf), "--quiet"))
    assert (third["rows_in"], third["rows_kept"], third["events"]) == (8, 4, 4)

    rows = sql(conf, "SELECT 'event' AS kind, e.customer_id AS id, e.product_id AS product, "
                     "CAST(e.quantity AS STRING) AS value, typeof(e.quantity) AS detail, "
                     "CONCAT(p.title, ' / ', p.product_group) AS title "
                     "FROM purchase_events e JOIN products p USING (product_id) "
                     "UNION ALL SELECT 'quarantine', customer_id, stock_code, reason, detail, NULL FROM quarantine "
                     "UNION ALL SELECT 'log', source_file, status, CAST(rows_in AS STRING), "
                     "CONCAT(rows_kept, '+', rows_quarantined, '+', rows_forgotten), NULL FROM ingest_log")
    events = sorted((r["id"], r["product"], r["value"], r["title"]) for r in rows if r["kind"] == "event")
    # The catalogue's title and group (graph.product_key group keys the graph by the group).
    assert events == [("1001", "BAN-1", "0.5", "Bananas Chiquita / Fruit"), ("1001", "MLK-2", "2.0", "Milk Arla / Dairy"),
                      ("1002", "BAN-1", "1.25", "Bananas Chiquita / Fruit"), ("1003", "MLK-2", "1.0", "Milk Arla / Dairy")]
    assert {r["detail"] for r in rows if r["kind"] == "event"} == {"double"}
    quarantined = {r["value"]: r["detail"] for r in rows if r["kind"] == "quarantine"}
    assert quarantined["unparsable_value"] == "unparsable: quantity (column qty) is not a finite number"
    assert quarantined["missing_customer"] == "customer_id (column cust_no) is empty"
    assert [(r["id"], r["product"], r["value"], r["detail"]) for r in rows if r["kind"] == "log"] == \
        [(f"parquet:{orders}", "ingested", "8", "4+4+0")]


def test_a_csv_source_is_typed_from_text_with_its_timestamp_pattern(spark, tmp_path):
    orders = tmp_path / "orders.csv"
    orders.write_text("household;item;weight_kg;when;basket\n"
                      "7;APPLES;0.5;01/03/2024 09:00;B1\n"
                      "7;PEARS;1;01/03/2024 09:00;B1\n"
                      "8;APPLES;heavy;01/03/2024 10:00;B2\n"
                      "9;APPLES;1;the first of March;B3\n")
    conf = write_conf(tmp_path, {"source": {
        "format": "csv", "path": str(orders), "options": {"delimiter": ";"},
        "timestamp_format": "dd/MM/yyyy HH:mm",
        "columns": {"customer_id": "household", "product_id": "item", "quantity": "weight_kg",
                    "event_ts": "when", "basket_id": "basket"}}})
    summary = last_json(personas("ingest", "--conf", str(conf), "--quiet"))
    assert (summary["rows_in"], summary["rows_kept"]) == (4, 2)
    assert summary["quarantined"] == {"unparsable_value": 2}
    assert summary["tables"]["ingest_log"]


def test_a_query_source_ingests_what_the_query_returns(spark, tmp_path):
    orders = write_orders(tmp_path / "orders")
    query = (f"SELECT cust_no AS customer, sku, qty, sold_at, order_no FROM parquet.`{orders}` "
             "WHERE cust_no = 1001")
    conf = write_conf(tmp_path, {"source": {"format": "query", "query": query, "columns": {
        "customer_id": "customer", "product_id": "sku", "quantity": "qty", "event_ts": "sold_at"}}})
    summary = last_json(personas("ingest", "--conf", str(conf), "--quiet"))
    assert (summary["rows_in"], summary["rows_kept"], summary["customers"]) == (2, 2, 1)
    assert summary["source"].startswith("query:SELECT")


def test_a_missing_source_exits_3_naming_the_key_and_the_resolved_path(spark, tmp_path):
    conf = write_conf(tmp_path, {"source": {"format": "delta", "path": "no/such/orders", "columns": MAPPING}})
    result = personas("ingest", "--conf", str(conf))
    assert result.returncode == 3, result.stderr
    assert "ingest.source.path" in result.stderr
    # Relative to the config file's folder, not to the repository or the current directory.
    assert f"ingest.source.path: {tmp_path.resolve() / 'no/such/orders'} not found" in result.stderr
    assert not (tmp_path / "work" / "tables" / "purchase_events").exists()


def test_an_unknown_source_format_or_column_key_exits_3_naming_it(spark, tmp_path):
    conf = write_conf(tmp_path, {"source": {"format": "excel", "path": "x.xlsx", "columns": MAPPING}})
    result = personas("ingest", "--conf", str(conf))
    assert result.returncode == 3 and "ingest.source.format: 'excel'" in result.stderr
    conf = write_conf(tmp_path, {"source": {"format": "csv", "path": "x.csv", "columns": {**MAPPING, "sku": "x"}}})
    result = personas("ingest", "--conf", str(conf))
    assert result.returncode == 3 and "unknown key(s) ['sku']" in result.stderr
    conf = write_conf(tmp_path, {"source": {"format": "csv", "path": "x.csv",
                                            "columns": {**MAPPING, "quantity": None}}})
    result = personas("ingest", "--conf", str(conf))
    assert result.returncode == 3 and "ingest.source.columns: quantity must name a source column" in result.stderr


def test_run_without_purchase_events_and_without_a_source_exits_3_instead_of_using_the_demo_data(spark, tmp_path):
    conf = write_conf(tmp_path, {"source": {"format": ""}})
    result = personas("run", "--conf", str(conf))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "tables.purchase_events" in result.stderr and "ingest.source is not set" in result.stderr
    assert not (tmp_path / "work" / "tables" / "purchase_events").exists()
