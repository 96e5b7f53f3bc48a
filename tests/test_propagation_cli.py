"""``personas propagate``: the job's last stdout line is one JSON object with tables and figures."""

from __future__ import annotations

import json

from persona_lib.cli import main
from persona_lib.config import REPO_ROOT
from persona_lib.testing import TEST_CONF


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["propagate", "--conf", str(TEST_CONF), *argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines else None), captured.err


def test_standalone_run_from_the_paper_split_and_recorded_labels(spark, tmp_path, capsys):
    code, result, _ = run_cli(capsys, "--workdir", str(tmp_path / "work"),
                           "--pairs", str(REPO_ROOT / "data/gplr_online_retail/split_train.csv.gz"),
                           "--labels-from", "replay-all", "--seed-fraction", "0.2", "--epsilon", "0.005")
    assert code == 0
    assert set(result["tables"]) == {"customer_affinity", "product_affinity", "propagation_runs"}
    assert result["tables"]["propagation_runs"]["version"] == 0
    assert result["converged"] and 0.0 <= result["max_residual"] < 0.005 / 2
    assert result["epsilon"] == 0.005 and result["supersteps"] == 2 and result["seeds"] > 500
    scores = spark.read.format("delta").load(result["tables"]["customer_affinity"]["location"])
    assert scores.where("persona = 'Unrepresentable'").count() == 0
    assert scores.select("customer_id").distinct().count() > 3000


def test_missing_events_table_exits_with_an_input_error(spark, tmp_path, capsys):
    code, result, err = run_cli(capsys, "--workdir", str(tmp_path / "empty"), "--labels-from", "replay-all")
    assert code == 3 and result is None
    assert "purchase_events" in err and "personas ingest" in err


def test_group_product_key_walks_catalogue_groups_and_gives_each_product_its_groups_affinity(spark, tmp_path, capsys):
    import yaml
    from pyspark.sql import functions as F

    from persona_lib import contracts, storage
    from persona_lib.config import load_config

    conf = tmp_path / "grouped.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "graph": {"product_key": "group"}}))
    workdir = tmp_path / "work"
    split = str(REPO_ROOT / "data/gplr_online_retail/split_train.csv.gz")
    # The catalogue: every product whose title has HEART in it belongs to one group.
    titles = spark.read.option("header", True).csv(split).select(F.trim("Description").alias("product_id")).distinct()
    products = titles.select(
        "product_id", F.col("product_id").alias("title"), F.lit(None).cast("timestamp").alias("first_seen"),
        F.lit(None).cast("timestamp").alias("last_seen"), F.lit(1).cast("long").alias("events"),
        F.lit(1).cast("long").alias("customers"),
        F.when(F.col("product_id").contains("HEART"), F.lit("Hearts")).alias("product_group"))
    tables = storage.resolve_tables(load_config(conf, workdir=str(workdir)))
    storage.overwrite(products, tables.get("products"), contracts.PRODUCTS)
    hearts = titles.where(F.col("product_id").contains("HEART")).count()

    code = main(["propagate", "--conf", str(conf), "--workdir", str(workdir), "--pairs", split,
                 "--labels-from", "replay-all", "--seed-fraction", "0.2", "--epsilon", "0.005"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert code == 0 and hearts > 10
    assert result["products"] == titles.count() - hearts + 1  # the walk's vertices: one for all HEART products
    scores = spark.read.format("delta").load(result["tables"]["product_affinity"]["location"])
    heart_scores = scores.where(F.col("product_id").contains("HEART"))
    # Per persona, every HEART product carries the one group vertex's score.
    spread = heart_scores.groupBy("persona").agg(F.countDistinct("score").alias("values"),
                                                  F.count(F.lit(1)).alias("products"))
    assert spread.where("values > 1").count() == 0
    assert spread.agg(F.max("products")).first()[0] == hearts


def test_group_product_key_without_a_products_table_exits_with_an_input_error(spark, tmp_path, capsys):
    import yaml

    conf = tmp_path / "grouped.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "graph": {"product_key": "group"}}))
    code = main(["propagate", "--conf", str(conf), "--workdir", str(tmp_path / "work"),
                 "--pairs", str(REPO_ROOT / "data/gplr_online_retail/split_train.csv.gz"), "--labels-from", "replay-all"])
    err = capsys.readouterr().err
    assert code == 3
    assert "graph.product_key group" in err and "products" in err and "personas ingest" in err
