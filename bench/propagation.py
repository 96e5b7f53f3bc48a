"""Propagation benchmark: Spark RevAff vs Spark exact vs GraphFrames PPR vs scipy exact.

    python bench/propagation.py [--quick] [--graphs online_retail,synth_1m,synth_13m]
                                [--lhat 1] [--epsilon E] [--seed-fraction 0.2]

Everything is measured in the same run on the same machine. Per graph it prints a small
table, then one JSON line (the contract for automated checks): graph, edges, personas,
epsilon, lhat, max_abs_error, mean_abs_error, revaff_s, exact_s, ppr_s, ppr_sources,
scipy_s, supersteps, top5_agreement, and more. Errors and agreement are measured against
the scipy exact answer (persona_lib/testing/reference.py, an implementation independent of the Spark
code). ``--quick`` runs online_retail only (CI, well under 3 minutes).

Graphs: online_retail is the paper's OnlineRetail train split (4,297 customers) with 20%
of customers seeded from the recorded GPT-4 labels; synth_1m and synth_13m are generated
here (numpy, deterministic by seed): planted personas, Zipf product popularity and
heavy-tailed customer activity, 206k customers / 50k products / 51 personas at 13.3M pairs
(the size of the paper's Instacart Full), 20% of customers labelled with their planted
personas.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from persona_lib.config import load_config  # noqa: E402
from persona_lib.graph import build_graph, edges_from_pairs  # noqa: E402
from persona_lib.jars import has_graphframes, list_jars  # noqa: E402
from persona_lib.propagation import propagate  # noqa: E402
from persona_lib.testing.reference import affinity, seed_matrix, walk_matrices  # noqa: E402

PAPER_DATA = REPO_ROOT / "data" / "gplr_online_retail"
GRAPHS = ("online_retail", "synth_1m", "synth_13m")
TOP_K = 5


@dataclass(frozen=True)
class SynthShape:
    customers: int
    products: int
    personas: int
    pairs: int


SYNTH_SHAPES = {
    "synth_1m": SynthShape(customers=20_620, products=41_521, personas=51, pairs=1_000_000),
    "synth_13m": SynthShape(customers=206_209, products=49_677, personas=51, pairs=13_307_953),
    # Customers and products log-interpolated between synth_1m and synth_13m (100k: extrapolated),
    # for bench/pipeline_scale.py's --quick run and its middle size.
    "synth_100k": SynthShape(customers=2_664, products=35_414, personas=51, pairs=100_000),
    "synth_4m": SynthShape(customers=70_800, products=45_706, personas=51, pairs=4_000_000),
}


def online_retail(seed_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    with gzip.open(PAPER_DATA / "split_train.csv.gz", "rt") as handle:
        train = pd.read_csv(handle, usecols=["CustomerID", "Description"], dtype=str)
    pairs = train.rename(columns={"CustomerID": "customer_id", "Description": "product_id"}).drop_duplicates()
    recorded = pd.read_csv(PAPER_DATA / "user_labels.csv.gz", dtype=str)
    recorded = recorded[recorded["CustomerID"].isin(set(pairs["customer_id"]))]
    picked = recorded.sample(frac=seed_fraction, random_state=seed)
    labels = picked.assign(persona=picked["personas"].str.split("|")).explode("persona")
    labels = labels.rename(columns={"CustomerID": "customer_id"})[["customer_id", "persona"]]
    return pairs.reset_index(drop=True), labels[labels["persona"] != "Unrepresentable"].reset_index(drop=True)


def synthetic(shape: SynthShape, seed_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs with planted personas; exactly ``shape.pairs`` distinct pairs, deterministic by seed."""
    rng = np.random.default_rng(seed)
    per_customer = rng.integers(1, 4, size=shape.customers)  # 1..3 planted personas
    planted = rng.integers(0, shape.personas, size=(shape.customers, 3))
    activity = rng.pareto(1.5, size=shape.customers) + 1.0  # heavy-tailed customer activity
    activity /= activity.sum()
    products_per_persona = shape.products // shape.personas
    keys = np.empty(0, dtype=np.int64)
    draws = int(shape.pairs * 1.25)
    while keys.size < shape.pairs:
        customer = rng.choice(shape.customers, size=draws, p=activity)
        slot = (rng.random(draws) * per_customer[customer]).astype(np.int64)
        persona = np.where(rng.random(draws) < 0.2, rng.integers(0, shape.personas, size=draws),
                           planted[customer, slot])
        rank = np.minimum(np.floor((products_per_persona + 1.0) ** rng.random(draws)) - 1,
                          products_per_persona - 1).astype(np.int64)  # Zipf(1) popularity
        product = persona + shape.personas * rank
        keys = np.unique(np.concatenate([keys, customer.astype(np.int64) * shape.products + product]))
        draws = max(draws // 4, 1_000)
    keys = np.sort(rng.choice(keys, size=shape.pairs, replace=False))
    pairs = pd.DataFrame({"customer_id": (keys // shape.products).astype(str),
                          "product_id": (keys % shape.products).astype(str)})
    present = np.unique(keys // shape.products)
    labelled = rng.choice(present, size=int(round(seed_fraction * present.size)), replace=False)
    rows = [(str(c), f"Persona {planted[c, s]:02d}") for c in labelled for s in range(per_customer[c])]
    labels = pd.DataFrame(rows, columns=["customer_id", "persona"]).drop_duplicates()
    return pairs, labels


def top_k_agreement(estimate: np.ndarray, exact: np.ndarray, k: int = TOP_K) -> float:
    """Share of reached customers whose estimated top-k is a valid exact top-k (ties allowed).

    Valid: it holds every persona whose exact score beats the exact k-th score, and none
    below it. Customers the exact walk does not reach (all zeros) are left out.
    """
    k = min(k, exact.shape[1])
    reached = exact.max(axis=1) > 0
    exact, estimate = exact[reached], estimate[reached]
    if exact.shape[0] == 0:
        return 1.0
    kth = -np.partition(-exact, k - 1, axis=1)[:, k - 1:k]
    picked = np.argsort(-estimate, axis=1, kind="stable")[:, :k]
    picked_exact = np.take_along_axis(exact, picked, axis=1)
    none_below = (picked_exact >= kth).all(axis=1)
    all_above = (picked_exact > kth).sum(axis=1) == (exact > kth).sum(axis=1)
    return float((none_below & all_above).mean())


def dense_scores(frame: pd.DataFrame, customers: list, personas: list) -> np.ndarray:
    row = pd.Series(np.arange(len(customers)), index=customers)
    col = pd.Series(np.arange(len(personas)), index=personas)
    dense = np.zeros((len(customers), len(personas)))
    dense[row[frame["customer_id"]].to_numpy(), col[frame["persona"]].to_numpy()] = frame["score"].to_numpy()
    return dense


def process_tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def timed(fn, cpu_root: int | None = None):
    """(value, wall seconds, CPU seconds of the Spark JVM and its Python workers)."""
    cpu_before = process_tree_cpu_s(cpu_root) if cpu_root else 0.0
    start = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - start
    return value, wall, (process_tree_cpu_s(cpu_root) - cpu_before if cpu_root else None)


def bench_graph(spark, config, name: str, pairs: pd.DataFrame, labels: pd.DataFrame, args) -> dict:
    walk = walk_matrices(pairs)
    seeds, personas = seed_matrix(labels, walk.customers, config.propagation.beta)
    (exact_scores, _), scipy_s, _ = timed(lambda: affinity(walk, seeds, args.lhat))

    # The pairs go to Parquet once, so Spark timings do not include pandas -> JVM transfer.
    source = Path(args.workdir) / f"{name}_pairs.parquet"
    pairs.to_parquet(source, index=False)
    label_frame = spark.createDataFrame(labels.astype(object), "customer_id string, persona string").cache()
    label_frame.count()
    jvm = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    graph, graph_s, _ = timed(lambda: build_graph(edges_from_pairs(spark.read.parquet(str(source)))))
    settings = replace(config.propagation, lhat=args.lhat)
    # Untimed warm-up at a coarse epsilon: JIT, Python workers and broadcast paths are hot
    # before either timed method runs, so neither pays for being first.
    propagate(spark, graph, label_frame, settings, epsilon=0.05)
    revaff, revaff_s, revaff_cpu_s = timed(lambda: propagate(spark, graph, label_frame, settings, method="revaff",
                                                             epsilon=args.epsilon), jvm)
    exact, exact_s, exact_cpu_s = timed(lambda: propagate(spark, graph, label_frame, settings, method="exact"), jvm)
    estimate = dense_scores(revaff.customer_affinity.toPandas(), walk.customers, personas)
    spark_exact = dense_scores(exact.customer_affinity.toPandas(), walk.customers, personas)
    errors = np.abs(estimate - exact_scores)
    stats = revaff.stats
    ppr_note = ("GraphFrames JVM library absent (Maven Central mirror serves no graphframes-spark4 "
                "artifact); parallelPersonalizedPageRank not run")
    graph.unpersist()
    return {
        "graph": name, "edges": graph.edge_count, "customers": graph.customer_count,
        "products": graph.product_count, "personas": len(personas), "seeds": stats["seeds"],
        "epsilon": stats["epsilon"], "lhat": args.lhat,
        "max_abs_error": float(errors.max()) if errors.size else 0.0,
        "mean_abs_error": float(errors.mean()) if errors.size else 0.0,
        "spark_exact_max_abs_error": float(np.abs(spark_exact - exact_scores).max()) if errors.size else 0.0,
        "bound_holds": bool(errors.size == 0 or errors.max() <= stats["epsilon"] + 1e-12),
        "revaff_s": round(revaff_s, 3), "exact_s": round(exact_s, 3), "graph_s": round(graph_s, 3),
        "revaff_cpu_s": round(revaff_cpu_s, 2), "exact_cpu_s": round(exact_cpu_s, 2),
        "load_average": round(os.getloadavg()[0], 1),
        "ppr_s": None, "ppr_sources": 0, "ppr_note": ppr_note if not args.has_graphframes else "not implemented",
        "scipy_s": round(scipy_s, 3),
        "supersteps": stats["supersteps"], "messages": stats["messages"],
        "exact_messages": exact.stats["messages"], "max_residual": stats["max_residual"],
        "converged": stats["converged"], "top5_agreement": top_k_agreement(estimate, exact_scores),
        "revaff_over_exact": round(revaff_s / exact_s, 3) if exact_s else None,
        "revaff_over_ppr": None,
        "revaff_over_scipy": round(revaff_s / scipy_s, 1) if scipy_s else None,
    }


def print_table(row: dict) -> None:
    lines = [
        f"== {row['graph']}: {row['edges']:,} edges, {row['customers']:,} customers, "
        f"{row['products']:,} products, {row['personas']} personas, {row['seeds']:,} seeds, lhat {row['lhat']}",
        f"  {'method':<14}{'seconds':>10}  notes",
        f"  {'spark revaff':<14}{row['revaff_s']:>10.2f}  cpu {row['revaff_cpu_s']:.1f} s, epsilon {row['epsilon']:.3g}, supersteps "
        f"{row['supersteps']}, messages {row['messages']}, max err {row['max_abs_error']:.2e}, "
        f"mean err {row['mean_abs_error']:.2e}, top5 {row['top5_agreement']:.4f}",
        f"  {'spark exact':<14}{row['exact_s']:>10.2f}  cpu {row['exact_cpu_s']:.1f} s, messages {row['exact_messages']}, "
        f"max err {row['spark_exact_max_abs_error']:.1e}",
        f"  {'graphframes':<14}{'-':>10}  {row['ppr_note']}",
        f"  {'scipy exact':<14}{row['scipy_s']:>10.2f}  single machine, the floor",
        f"  revaff/exact {row['revaff_over_exact']}, revaff/scipy {row['revaff_over_scipy']}, "
        f"graph build {row['graph_s']:.2f} s, bound holds: {row['bound_holds']}, "
        f"load average {row['load_average']} on {os.cpu_count()} cores",
    ]
    print("\n".join(lines), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="online_retail only (CI)")
    parser.add_argument("--graphs", default=",".join(GRAPHS), help="comma-separated graph names")
    parser.add_argument("--lhat", type=int, default=1)
    parser.add_argument("--epsilon", type=float, default=None, help="default: the configured rule")
    parser.add_argument("--seed-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--conf", default=str(REPO_ROOT / "conf" / "local.yaml"))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--fast-jvm", action="store_true",
                        help="C1-only JIT (quick start-up, slower heavy work; off for the benchmark)")
    args = parser.parse_args(argv)
    graphs = ["online_retail"] if args.quick else [g.strip() for g in args.graphs.split(",") if g.strip()]
    unknown = sorted(set(graphs) - {"online_retail", *SYNTH_SHAPES})
    if unknown:
        parser.error(f"unknown graph(s) {unknown}; known: {['online_retail', *SYNTH_SHAPES]}")
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-propagation-")
    config = load_config(args.conf, workdir=args.workdir).replace("spark", fast_jvm=args.fast_jvm)
    args.has_graphframes = has_graphframes(list_jars(config.resolve_path(config.spark.jars_dir)))

    from persona_lib.spark import build_local_spark

    spark = build_local_spark(config)
    for name in graphs:
        if name == "online_retail":
            pairs, labels = online_retail(args.seed_fraction, args.seed)
        else:
            pairs, labels = synthetic(SYNTH_SHAPES[name], args.seed_fraction, args.seed)
        row = bench_graph(spark, config, name, pairs, labels, args)
        print_table(row)
        print(json.dumps(row), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
