"""The graph build alone, on bench/propagation.py's synthetic graphs: vertex sides broadcast to
the edge join (up to graph.BROADCAST_VERTICES, the default) against the same build without
the hints (``broadcast_vertices=0``: the planner's own choice, the path of vertex sets over
the limit), measured in the same session, alternating, after an untimed warm-up of each.

    python bench/graph_build.py [--graphs synth_1m,synth_13m] [--repeats 3]

The pairs are generated once per graph, written to Parquet, read back and persisted as the
pipeline persists its pairs (``pipeline.purchase_graph``), so each timing is ``build_graph``
alone. One JSON line per graph goes to stdout and to bench/results/graph_build.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pyspark import StorageLevel

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from propagation import SYNTH_SHAPES, synthetic  # noqa: E402

from persona_lib.config import load_config  # noqa: E402
from persona_lib.graph import BROADCAST_VERTICES, build_graph, edges_from_pairs  # noqa: E402
from persona_lib.spark import build_local_spark  # noqa: E402

PATHS = {"broadcast": BROADCAST_VERTICES, "unhinted": 0}


def timed_build(edges, broadcast_vertices: int) -> tuple[float, int]:
    started = time.perf_counter()
    graph = build_graph(edges, broadcast_vertices=broadcast_vertices)
    seconds = time.perf_counter() - started
    count = graph.edge_count
    graph.unpersist()
    return seconds, count


def bench_graph(spark, name: str, workdir: Path, repeats: int) -> dict:
    pairs, _ = synthetic(SYNTH_SHAPES[name], seed_fraction=0.2, seed=42)
    source = workdir / f"{name}_pairs.parquet"
    pairs.to_parquet(source, index=False)
    edges = edges_from_pairs(spark.read.parquet(str(source))).persist(StorageLevel.MEMORY_AND_DISK)
    edges.count()
    for path in PATHS.values():  # warm-up: JIT and broadcast paths hot before any timing
        timed_build(edges, path)
    seconds: dict[str, list[float]] = {path: [] for path in PATHS}
    counts = set()
    for _ in range(repeats):
        for path, broadcast_vertices in PATHS.items():
            elapsed, count = timed_build(edges, broadcast_vertices)
            seconds[path].append(elapsed)
            counts.add(count)
    edges.unpersist()
    medians = {path: statistics.median(values) for path, values in seconds.items()}
    return {
        "graph": name, "edges": len(pairs), "same_edge_count": counts == {len(pairs)},
        "broadcast_s": round(medians["broadcast"], 2), "unhinted_s": round(medians["unhinted"], 2),
        "broadcast_over_unhinted": round(medians["broadcast"] / medians["unhinted"], 3),
        "timings_s": {path: [round(v, 2) for v in values] for path, values in seconds.items()},
        "load_average": round(os.getloadavg()[0], 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graphs", default="synth_1m,synth_13m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conf", default=str(REPO_ROOT / "conf" / "local.yaml"))
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "graph_build.jsonl"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="graph-build-") as scratch:
        workdir = Path(scratch)
        spark = build_local_spark(load_config(args.conf, workdir=str(workdir / "work")))
        try:
            for name in args.graphs.split(","):
                row = bench_graph(spark, name, workdir, args.repeats)
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as out:
                    out.write(json.dumps(row) + "\n")
        finally:
            spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
