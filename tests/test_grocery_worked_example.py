"""README "Run on your data", the worked example, through the CLI only: `personas synth
--layout grocery` writes a grocery retailer's files (other column names, weights as
fractional quantities, a separate catalogue, labels with "none of these" rows); ingest maps
them, `label --from-file` stores the labels, `run` with budget 0 propagates them, and every
household gets its personas. No Python API of ours is called: each step is
`.venv/bin/personas`, one JVM at a time. This is the suite's one full run on this layout."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from persona_lib.testing import TEST_CONF

PERSONAS = Path(sys.executable).with_name("personas")
HOUSEHOLDS = 300


def personas(*args: str) -> dict:
    result = subprocess.run([str(PERSONAS), *args, "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"personas {args[0]}: {result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def sql(conf: Path, statement: str) -> list[dict]:
    result = personas("sql", "--conf", str(conf), "--format", "json", "--max-rows", "10000", statement)
    assert not result["truncated"]
    return [dict(zip(result["columns"], row)) for row in result["rows"]]


def read_csv(path: Path, key: str) -> dict[str, set[str]]:
    with path.open(newline="") as handle:
        return {row[key]: set(filter(None, row["personas"].split("|"))) for row in csv.DictReader(handle)}


def test_a_grocery_export_is_ingested_labelled_from_a_file_and_published_through_the_cli(tmp_path):
    out = tmp_path / "grocery"
    made = personas("synth", "--layout", "grocery", "--out", str(out), "--households", str(HOUSEHOLDS),
                    "--labelled-share", "0.3", "--seed", "3", "--conf", str(TEST_CONF))
    assert made["files"] == ["catalogue.csv", "grocery.yaml", "labels.csv", "taxonomy.yaml",
                             "transactions.parquet", "truth.csv"]
    assert made["labelled_none_of_these"] > 0
    conf = out / "grocery.yaml"
    truth = read_csv(out / "truth.csv", "household_key")
    labels = read_csv(out / "labels.csv", "customer_id")
    assert len(truth) == HOUSEHOLDS and set(labels) < set(truth)

    ingested = personas("ingest", "--conf", str(conf))
    assert ingested["source"] == f"parquet:{out / 'transactions.parquet'}"
    assert (ingested["rows_in"], ingested["rows_kept"], ingested["customers"]) == \
        (made["lines"], made["lines"], HOUSEHOLDS)

    loaded = personas("label", "--from-file", str(out / "labels.csv"), "--conf", str(conf))
    assert loaded["personas_without_seed"] == []

    published = personas("run", "--conf", str(conf))
    assert published["rounds"][0]["llm_calls"] == 0 and published["customers"] == HOUSEHOLDS

    events = sql(conf, "SELECT count(*) AS events, count_if(quantity <> floor(quantity)) AS weighed, "
                       "min(typeof(quantity)) AS type, count_if(product_id NOT LIKE 'SKU%') AS foreign_products, "
                       "count(DISTINCT customer_id) AS customers FROM purchase_events")
    assert events[0]["weighed"] > 0 and events[0]["type"] == "double"
    # Only the grocery source was read: no Online Retail product, customer or landing file.
    assert events[0]["foreign_products"] == 0 and events[0]["customers"] == HOUSEHOLDS
    assert [row["source_file"] for row in sql(conf, "SELECT source_file FROM ingest_log")] == \
        [ingested["source"]]
    titles = sql(conf, "SELECT title FROM products WHERE product_id = 'SKU01002'")
    assert titles == [{"title": "Bananas Green Valley Organic"}]

    stored = sql(conf, "SELECT customer_id, status, source FROM persona_labels")
    assert {row["source"] for row in stored} == {"file:labels.csv"}
    assert sorted(row["customer_id"] for row in stored if row["status"] == "unrepresentable") == \
        sorted(customer for customer, names in labels.items() if not names)

    published_personas = {row["customer_id"]: (row["source"], set(row["personas"])) for row in
                          sql(conf, "SELECT customer_id, source, personas FROM customer_personas")}
    unlabelled = set(truth) - set(labels)
    assert unlabelled <= set(published_personas)
    assert {published_personas[c][0] for c in unlabelled} == {"propagated"}
    # The planted personas shape purchases, so the propagated ones mostly find them.
    hits = sum(len(published_personas[c][1] & truth[c]) for c in unlabelled)
    predicted = sum(len(published_personas[c][1]) for c in unlabelled)
    planted = sum(len(truth[c]) for c in unlabelled)
    assert 2 * hits / (predicted + planted) > 0.6

    household = min(c for c in unlabelled if truth[c])
    answer = personas("query", "--customer", household, "--conf", str(conf))
    assert answer["found"] and answer["rows"][0]["persona"] in truth[household]
