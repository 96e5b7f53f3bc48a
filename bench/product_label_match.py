"""How many products of the default cut the replay product labeller can answer: the GPLR
authors' recorded GPT-4 product labels are keyed by title, the default cut keys products by
StockCode with ``products.title`` (the most frequent title), so replay matches by normalised
title (trimmed, whitespace runs as one space, lower case).

    .venv/bin/python bench/product_label_match.py [--conf conf/test.yaml] [--workdir DIR]

Ingests the bundled landing files into the work dir if purchase_events is not there yet, then
labels every titled product with the replay labeller (selection all) and prints one JSON line:
the match rate over products, weighted by purchase events and by distinct buyers, among the
20% most-bought products, the same with an exact (trimmed, case-sensitive) title match, how
many recorded titles found a product, and the stage's calls and prompt characters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pyspark.sql import Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from persona_lib import storage  # noqa: E402
from persona_lib.config import load_config  # noqa: E402
from persona_lib.ingest import ingest  # noqa: E402
from persona_lib.labelling.products import label_products, recorded_product_answers, title_key, titled  # noqa: E402
from persona_lib.spark import get_spark  # noqa: E402

TOP_SHARE = 0.2


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO_ROOT / "conf" / "test.yaml"))
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="product-match-")
    config = load_config(args.conf, workdir=workdir)
    config = config.replace("labelling", labeller="replay", products=dataclasses.replace(
        config.labelling.products, enabled=True, selection="all"))
    spark = get_spark(config)
    tables = storage.resolve_tables(config)
    started = time.perf_counter()
    if not tables.purchase_events.exists(spark):
        ingest(spark, config)
    products = tables.products.read(spark).cache()
    summary = label_products(spark, config, storage.resolve_tables(config), products, run_id="bench-product-match")

    labels = tables.product_labels.read(spark).select(
        "product_id", (F.col("status") != "no_answer").cast("int").alias("answered"))
    recorded = recorded_product_answers(spark, config)
    exact_titles = (spark.read.option("header", True).csv(str(config.resolve_path(
        config.labelling.products.replay_answers))).where(F.trim("personas") != "")
        .select(F.trim("Description").alias("exact")).distinct()
        .withColumn("exact_match", F.lit(1)))
    ranked = (titled(products).join(labels, "product_id")
              .join(exact_titles, F.trim("title") == F.col("exact"), "left")
              .withColumn("exact_match", F.coalesce("exact_match", F.lit(0)))
              .withColumn("popularity_rank", F.row_number().over(Window.orderBy(
                  F.desc("customers"), F.desc("events"), F.asc("product_id")))))
    n_titled = ranked.count()
    figures = ranked.agg(
        F.avg("answered").alias("match_rate_products"),
        (F.sum(F.col("answered") * F.col("events")) / F.sum("events")).alias("match_rate_by_events"),
        (F.sum(F.col("answered") * F.col("customers")) / F.sum("customers")).alias("match_rate_by_buyers"),
        F.avg(F.when(F.col("popularity_rank") <= round(TOP_SHARE * n_titled), F.col("answered")))
        .alias("match_rate_top_20pct"),
        F.avg("exact_match").alias("exact_match_rate_products"),
    ).first().asDict()
    matched_records = (recorded.join(titled(products).select(title_key("title").alias("title_key")),
                                     "title_key", "left_semi").count())
    result = {
        "products": summary["products"], "titled": n_titled, "untitled": summary["untitled"],
        **{k: round(float(v), 4) for k, v in figures.items()},
        "recorded_titles": recorded.count(), "recorded_titles_matched": matched_records,
        "llm_calls": summary["llm_calls"], "cache_hits": summary["cache_hits"],
        "prompt_chars": summary["prompt_chars"],
        "prompt_chars_per_call": round(summary["prompt_chars"] / max(summary["llm_calls"], 1), 1),
        "statuses": summary["statuses"], "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
