"""How the HyperLogLog precision of ``why.labelled_neighbours`` trades time for accuracy.

``publishing.labelled_neighbours`` counts each customer's distinct labelled co-buyers as the
union of its products' HyperLogLog sketches. At 13.3M pairs that union was the largest job of
publishing (413 s), because its cost grows with edges x the sketch's register count
(2^lgConfigK). This benchmark runs the production function on one synthetic graph of
``bench/propagation.py`` at several lgConfigK values, in the same Spark session, and prints
for each: wall seconds, the ratio to the first value given (the reference), and the error
against the exact counts (a scipy sparse product, customers x labelled customers).

    python bench/labelled_neighbours.py --graph synth_1m --lg-k 12,10,8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from propagation import SYNTH_SHAPES, synthetic  # noqa: E402

from persona_lib.config import load_config  # noqa: E402
from persona_lib.publishing import labelled_neighbours  # noqa: E402

BUDGET = 0.2  # the share of customers labelled, as in bench/pipeline_scale.py


def exact_counts(pairs: pd.DataFrame, labelled: np.ndarray) -> pd.Series:
    """Distinct labelled co-buyers per customer, the customer excluded, by sparse product."""
    customers, customer_index = np.unique(pairs["customer_id"].to_numpy(), return_inverse=True)
    _, product_index = np.unique(pairs["product_id"].to_numpy(), return_inverse=True)
    bought = sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (customer_index, product_index)))
    is_labelled = np.isin(customers, labelled)
    co_buyers = (bought @ bought[is_labelled].T).tocsr()
    counts = np.diff(co_buyers.indptr) - is_labelled.astype(np.int64)  # a labelled customer co-buys with itself
    return pd.Series(counts, index=customers, name="exact")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graph", default="synth_1m", choices=sorted(SYNTH_SHAPES))
    parser.add_argument("--lg-k", default="12,10,8", help="comma-separated lgConfigK values; the first is the reference")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per value (the fastest is reported)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--conf", default=str(REPO_ROOT / "conf" / "local.yaml"))
    args = parser.parse_args(argv)
    lg_ks = [int(v) for v in args.lg_k.split(",")]

    pairs, planted = synthetic(SYNTH_SHAPES[args.graph], seed_fraction=1.0, seed=args.seed)
    customers = planted["customer_id"].drop_duplicates()
    labelled = customers.sample(n=int(round(BUDGET * len(customers))), random_state=args.seed).to_numpy()
    exact = exact_counts(pairs, labelled)

    from persona_lib.spark import build_local_spark

    config = load_config(args.conf, workdir=tempfile.mkdtemp(prefix="bench-neighbours-"))
    spark = build_local_spark(config)
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    edges = spark.createDataFrame(pairs).repartition(partitions, "customer_id").persist()
    labels = spark.createDataFrame(pd.DataFrame({"customer_id": labelled}))
    edges.count()

    reference_s = None
    for lg_k in lg_ks:
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            counts = labelled_neighbours(edges, labels, lg_k)  # materialised on return
            seconds.append(time.perf_counter() - started)
        estimate = counts.toPandas().set_index("customer_id")["labelled_neighbours"]
        both = pd.concat([exact, estimate.rename("estimate")], axis=1).fillna(0)
        relative = (both["estimate"] - both["exact"]).abs() / both["exact"].clip(lower=1)
        small = both["exact"] <= 100
        reference_s = reference_s or min(seconds)
        print(json.dumps({
            "graph": args.graph, "edges": len(pairs), "labelled": len(labelled), "lg_config_k": lg_k,
            "seconds": round(min(seconds), 2), "over_reference": round(min(seconds) / reference_s, 3),
            "reference_lg_config_k": lg_ks[0],
            "mean_relative_error": round(float(relative.mean()), 4),
            "p99_relative_error": round(float(relative.quantile(0.99)), 4),
            "exact_share_up_to_100": round(float((both.loc[small, "estimate"] == both.loc[small, "exact"]).mean()), 4)
            if small.any() else None,
            "zero_agrees": bool(((both["estimate"] == 0) == (both["exact"] == 0)).all()),
            "median_exact": float(both["exact"].median()),
        }), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
