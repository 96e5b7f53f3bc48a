"""The grocery worked example at full size: does the published persona probability find the
planted personas of households nobody labelled, better than a category-share baseline?

    .venv/bin/python bench/grocery_auc.py [--households 2000] [--seed 7] [--labelled-share 0.15]
                                          [--out work/grocery-bench] [--conf conf/local.yaml]
                                          [--skip-pipeline] [--product-key product|group]

The production path, through the CLI (one JVM at a time): `personas synth --layout grocery`,
`ingest`, `label --from-file labels.csv` and `run` (budget 0: only the file labels). Then, per
planted persona, on the held-out households (every household not in labels.csv):

- published: the AUC of ``persona_affinity.probability`` against truth.csv (a missing
  customer-persona row counts as probability 0);
- baseline: a logistic regression (Spark ML, L2 chosen by 3-fold CV on AUC) on each
  household's category shares (basket lines per catalogue category / all its lines), trained
  on the same labelled households with the same labels (a "none of these" household is
  negative for every persona).

``--product-key group`` runs the same with ``graph.product_key: group`` (the walk's product
vertices are the catalogue's categories, not SKUs) and writes grocery_auc_group.jsonl: the
effect of the coarser key, side by side with the SKU graph's figures.

Prints one JSON line per persona and the mean last; writes bench/results/grocery_auc.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PERSONAS = Path(sys.executable).with_name("personas")
RESULTS = REPO / "bench" / "results" / "grocery_auc.jsonl"
GROUP_RESULTS = REPO / "bench" / "results" / "grocery_auc_group.jsonl"


def personas(*args: str) -> dict:
    started = time.monotonic()
    result = subprocess.run([str(PERSONAS), *args, "--quiet"], capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"personas {args[0]} exited with {result.returncode}")
    print(f"# personas {args[0]}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_pipeline(args: argparse.Namespace, out: Path) -> dict:
    made = personas("synth", "--layout", "grocery", "--out", str(out), "--households", str(args.households),
                    "--seed", str(args.seed), "--labelled-share", str(args.labelled_share), "--conf", args.conf)
    conf = out / "grocery.yaml"
    if args.product_key != "product":  # the generated config, with the graph keyed otherwise
        keyed = out / f"grocery_{args.product_key}.yaml"
        keyed.write_text(json.dumps({"base": conf.name, "graph": {"product_key": args.product_key}}))
        conf = keyed
    conf = str(conf)
    ingested = personas("ingest", "--conf", conf)
    personas("label", "--from-file", str(out / "labels.csv"), "--conf", conf)
    published = personas("run", "--conf", conf)
    return {"lines": made["lines"], "households": made["households"], "labelled": made["labelled"],
            "labelled_none_of_these": made["labelled_none_of_these"], "rows_kept": ingested["rows_kept"],
            "run_id": published["run_id"], "run_seconds": published["seconds"]}


def score(out: Path) -> list[dict]:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
    from pyspark.sql import functions as F

    from persona_lib import storage
    from persona_lib.config import load_config
    from persona_lib.spark import get_spark
    from persona_lib.synth_grocery import persona_names

    config = load_config(out / "grocery.yaml")
    spark = get_spark(config)
    tables = storage.resolve_tables(config)
    read_csv = spark.read.option("header", True).csv
    truth = read_csv(str(out / "truth.csv")).select(
        F.col("household_key").alias("customer_id"),
        F.coalesce(F.split("personas", r"\|"), F.array().cast("array<string>")).alias("planted"))
    labelled = read_csv(str(out / "labels.csv")).select("customer_id", F.lit(True).alias("labelled"))
    catalogue = read_csv(str(out / "catalogue.csv")).select(F.col("sku").alias("product_id"), "category")
    categories = sorted(r.category for r in catalogue.select("category").distinct().collect())

    events = tables.purchase_events.read(spark)
    lines = events.join(F.broadcast(catalogue), "product_id").groupBy("customer_id").pivot("category", categories) \
        .agg(F.count(F.lit(1))).na.fill(0)
    total = sum((F.col(f"`{c}`") for c in categories), F.lit(0))
    shares = lines.select("customer_id", *[(F.col(f"`{c}`") / total).alias(f"share_{i}")
                                          for i, c in enumerate(categories)])
    households = (truth.join(shares, "customer_id")
                  .join(labelled, "customer_id", "left")
                  .withColumn("labelled", F.coalesce("labelled", F.lit(False))))
    affinity = tables.persona_affinity.read(spark).select("customer_id", "persona", "probability")
    assembler = VectorAssembler(inputCols=[f"share_{i}" for i in range(len(categories))], outputCol="features")
    # One evaluator per score column: the CV search keeps a reference to its own.
    def auc_of(column: str) -> BinaryClassificationEvaluator:
        return BinaryClassificationEvaluator(metricName="areaUnderROC", rawPredictionCol=column)

    results = []
    for persona in persona_names():
        data = households.withColumn("label", F.array_contains("planted", persona).cast("double")).cache()
        train, held_out = data.where("labelled"), data.where("NOT labelled")
        regression = LogisticRegression(maxIter=100)
        search = CrossValidator(
            estimator=Pipeline(stages=[assembler, regression]), evaluator=auc_of("rawPrediction"), numFolds=3, seed=7,
            estimatorParamMaps=ParamGridBuilder().addGrid(regression.regParam, [0.001, 0.01, 0.1, 1.0]).build())
        baseline = search.fit(train).transform(held_out)
        baseline_auc = auc_of("probability").evaluate(baseline)
        published = held_out.join(affinity.where(F.col("persona") == persona), "customer_id", "left") \
            .withColumn("published", F.coalesce("probability", F.lit(0.0)))
        published_auc = auc_of("published").evaluate(published)
        counts = held_out.agg(F.count(F.lit(1)).alias("held_out"), F.sum("label").alias("positives")).first()
        train_positives = train.agg(F.sum("label")).first()[0]
        data.unpersist()
        results.append({"persona": persona, "held_out": counts["held_out"], "positives": int(counts["positives"]),
                        "labelled_positives": int(train_positives),
                        "published_auc": round(published_auc, 4), "baseline_auc": round(baseline_auc, 4),
                        "published_minus_baseline": round(published_auc - baseline_auc, 4)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--households", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--labelled-share", type=float, default=0.15)
    parser.add_argument("--out", default=str(REPO / "work" / "grocery-bench"))
    parser.add_argument("--conf", default=str(REPO / "conf" / "local.yaml"),
                        help="the base config of the generated grocery.yaml")
    parser.add_argument("--product-key", choices=("product", "group"), default="product",
                        help="graph.product_key of the run (group: the catalogue's categories)")
    parser.add_argument("--skip-pipeline", action="store_true",
                        help="score the tables of an earlier run in --out again")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    recorded = out / "pipeline.json"  # what the last pipeline run reported, for --skip-pipeline
    if args.skip_pipeline:
        pipeline = json.loads(recorded.read_text()) if recorded.exists() else {}
    else:
        pipeline = run_pipeline(args, out)
        recorded.write_text(json.dumps(pipeline))
    rows = score(out)
    mean = {key: round(sum(r[key] for r in rows) / len(rows), 4)
            for key in ("published_auc", "baseline_auc", "published_minus_baseline")}
    summary = {"persona": "mean", **mean,
               "published_beats_baseline": sum(r["published_auc"] > r["baseline_auc"] for r in rows),
               "personas": len(rows), "households": args.households, "seed": args.seed,
               "labelled_share": args.labelled_share, "base_config": Path(args.conf).name,
               "product_key": args.product_key, **pipeline}
    results = RESULTS if args.product_key == "product" else GROUP_RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("w") as handle:
        for row in [*rows, summary]:
            line = json.dumps(row)
            print(line)
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
