"""README "Run on your data", the worked example, through the CLI only: `personas synth
--layout grocery` writes a grocery retailer's files (other column names, weights as
fractional quantities, a separate catalogue, labels with "none of these" rows); ingest maps
them, `label --from-file` stores the labels, `run` with budget 0 propagates them, and every
household gets its personas. No Python API of ours is called: each step is the `personas`
command's entry point with the README's arguments, run in this process on the suite's shared
session (tests/cli_runner.py). This is the suite's one full run on this layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from persona_lib.testing import TEST_CONF
from tests.cli_runner import run_personas

HOUSEHOLDS = 300


def personas(*args: str) -> dict:
    result = run_personas(*args, "--quiet")
    assert result.returncode == 0, f"personas {args[0]}: {result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def sql(conf: Path, statement: str) -> list[dict]:
    result = personas("sql", "--conf", str(conf), "--format", "json", "--max-rows", "10000", statement)
    assert not result["truncated"]
    return [dict(zip(result["columns"], row)) for row in result["rows"]]


def read_csv(path: Path, key: str) -> dict[str, set[str]]:
    with path.open(newline="") as handle:
        return {row[key]: set(filter(None, row["personas"].split("|"))) for row in csv.DictReader(handle)}


def test_a_grocery_export_is_ingested_labelled_from_a_file_and_published_through_the_cli(spark, tmp_path):
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

    # One `personas sql` (one JVM) for every table the checks read.
    rows = sql(conf, """
        SELECT 'events' AS kind, CAST(count_if(quantity <> floor(quantity)) AS STRING) AS a,
               min(typeof(quantity)) AS b, CAST(count_if(product_id NOT LIKE 'SKU%') AS STRING) AS c,
               CAST(count(DISTINCT customer_id) AS STRING) AS d FROM purchase_events
        UNION ALL SELECT 'log', source_file, NULL, NULL, NULL FROM ingest_log
        UNION ALL SELECT 'title', title, NULL, NULL, NULL FROM products WHERE product_id = 'SKU01002'
        UNION ALL SELECT 'label', customer_id, status, source, NULL FROM persona_labels
        UNION ALL SELECT 'published', customer_id, source, concat_ws('|', personas), NULL FROM customer_personas""")
    of = {kind: [row for row in rows if row["kind"] == kind] for kind in ("events", "log", "title", "label", "published")}
    [events] = of["events"]
    weighed, quantity_type, foreign_products, customers = events["a"], events["b"], events["c"], events["d"]
    assert int(weighed) > 0 and quantity_type == "double"
    # Only the grocery source was read: no Online Retail product, customer or landing file.
    assert (foreign_products, customers) == ("0", str(HOUSEHOLDS))
    assert [row["a"] for row in of["log"]] == [ingested["source"]]
    assert [row["a"] for row in of["title"]] == ["Bananas Green Valley Organic"]

    assert {row["c"] for row in of["label"]} == {"file:labels.csv"}
    assert sorted(row["a"] for row in of["label"] if row["b"] == "unrepresentable") == \
        sorted(customer for customer, names in labels.items() if not names)

    published_personas = {row["a"]: (row["b"], set(filter(None, row["c"].split("|")))) for row in of["published"]}
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


def test_synth_layout_options_are_usage_errors_before_spark_starts(tmp_path):
    for args, message in ((["--layout", "grocery"], "--layout grocery needs --out DIR"),
                          (["--out", str(tmp_path)], "apply to --layout grocery only"),
                          (["--layout", "grocery", "--out", str(tmp_path), "--customers", "5"],
                           "--customers apply to --layout synth only"),
                          (["--layout", "grocery", "--out", str(tmp_path), "--households", "0"],
                           "invalid ['households']")):
        result = run_personas("synth", *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
    assert list(tmp_path.iterdir()) == []
