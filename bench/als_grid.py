"""How the recommendation baseline's ALS settings were chosen: NDCG@10 of MLlib ALS
(implicit) for a grid of settings on a validation split carved from the authors' TRAIN split
(20% of each customer's train items held out, ``recommend.split_train``), never on
split_test. The best row is what ``evaluation.als_*`` defaults to.

    .venv/bin/python bench/als_grid.py [--conf conf/test.yaml] [--workdir DIR]

Prints one line per setting, then one JSON line with every figure and the best setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from persona_lib.config import load_config  # noqa: E402
from persona_lib.evaluation import data, metrics, recommend  # noqa: E402
from persona_lib.spark import get_spark  # noqa: E402

# (rank, iterations, reg, alpha): the previous default first, then the directions that helped.
GRID = (
    (32, 10, 0.05, 10.0),
    (64, 15, 0.05, 10.0),
    (64, 15, 0.02, 5.0),
    (64, 15, 0.05, 3.0),
    (128, 15, 0.02, 5.0),
    (128, 15, 0.05, 3.0),
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO_ROOT / "conf" / "test.yaml"))
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="als-grid-")
    config = load_config(args.conf, workdir=workdir)
    spark = get_spark(config)
    train = data.train_pairs(spark, config).localCheckpoint(eager=True)
    items = recommend.index_items(train).localCheckpoint(eager=True)
    fit_part, validation = recommend.split_train(train, config.evaluation.validation_fraction, seed=1)
    no_personas = spark.createDataFrame([], "customer_id string, persona string")
    rows = []
    for rank, iterations, reg, alpha in GRID:
        started = time.monotonic()
        setting = config.replace("evaluation", als_rank=rank, als_iterations=iterations, als_reg=reg, als_alpha=alpha)
        lists = recommend.recommend(spark, setting, fit_part, items, no_personas, [0.0], 10)
        ndcg = metrics.ranking_metrics(lists, validation, [10])["ndcg"][10]
        rows.append({"rank": rank, "iterations": iterations, "reg": reg, "alpha": alpha,
                     "validation_ndcg_at_10": round(ndcg, 4), "seconds": round(time.monotonic() - started, 1)})
        print(f"rank {rank:>3} iterations {iterations:>2} reg {reg:<5} alpha {alpha:<5} "
              f"validation NDCG@10 {ndcg:.4f} ({rows[-1]['seconds']} s)", flush=True)
    best = max(rows, key=lambda r: r["validation_ndcg_at_10"])
    print(json.dumps({"grid": rows, "best": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
