"""Serving benchmark: ``personas serve`` driven by a bounded closed-loop load generator.

    python bench/serve.py [--workdir work] [--scales 1,10,100] [--sequential 2000]
                          [--concurrent 16000] [--clients 8] [--out DIR]

The service runs as the real ``personas serve`` subprocess on 127.0.0.1 over the latest
complete run of ``--workdir`` (``personas run --workdir DIR`` first; the bundled run is
``./work``). Scale 1 serves that run; scales 10 and 100 serve published tables synthesised
directly in the published schema with deltalake: every customer copied 10 or 100 times
(ids ``<id>x<k>``), its persona_affinity, customer_personas and purchase_events rows with it,
product_personas and the products unchanged, one ``runs`` row naming their versions, and the
same run id, so the cold-start model of the base run's MLflow registry serves all three.

Each scale runs a fixed number of requests per scenario, then stops (closed loop: each client
sends its next request when the previous answer is in):
- ``personas_sequential``: GET /customers/{id}/personas, one client, 90% known / 10% unknown ids;
- ``personas_concurrent``: the same mix from ``--clients`` keep-alive clients;
- ``cold_start``: POST /cold-start with 1-5 known products and sometimes an unknown one;
- ``rerank``: POST /rerank, 20 candidates with base scores, known customers;
- ``query``: POST /query for known customers with $p, $why, persona;
- ``mixed_concurrent``: all of the above interleaved from ``--clients`` clients.
An error is any status other than the expected one (200; 404 for unknown ids) or a failed
connection. It prints one JSON line per scenario and a summary with the targets (2 cores: GET
personas p99 <= 10 ms sequential, >= 1,000 req/s with 8 clients, 0 errors; cold start
p99 <= 25 ms), the service's RSS per million published (customer, persona) rows, and the load
average before and after (the build machine is shared: read the figures beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from persona_lib.config import load_config  # noqa: E402
from persona_lib.serving import latest_complete_run, read_arrow, table_location  # noqa: E402
from persona_lib.storage import resolve_tables  # noqa: E402

PERSONAS = Path(sys.executable).with_name("personas")
TARGETS = {"personas_sequential_p99_ms": 10.0, "personas_concurrent_rps": 1000.0, "cold_start_p99_ms": 25.0}


# --------------------------------------------------------------------------- synthesis


def synthesise(base_config, scale: int, workdir: Path) -> dict:
    """Published tables with every customer copied ``scale`` times, in the base tables' schema."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable, write_deltalake

    base_tables = resolve_tables(base_config)
    run = latest_complete_run(base_tables.runs)
    tables = workdir / "tables"
    if (tables / "runs").exists():
        return {"workdir": str(workdir), "reused": True}
    tables.mkdir(parents=True, exist_ok=True)

    def copies(key: str, version, id_columns: tuple[str, ...]) -> dict:
        location = table_location(base_tables.get(key))
        base = DeltaTable(location, version=version).to_pyarrow_table()
        target = str(tables / key)
        for k in range(scale):
            suffix = "" if k == 0 else f"x{k}"
            chunk = base
            for column in id_columns:
                index = chunk.schema.get_field_index(column)
                chunk = chunk.set_column(index, chunk.schema.field(index),
                                         pc.binary_join_element_wise(chunk[column], pa.scalar(suffix), ""))
            write_deltalake(target, chunk, mode="append" if k else "overwrite")
        return {"rows": base.num_rows * scale, "version": DeltaTable(target).version()}

    versions = run["table_versions"]
    written = {
        "persona_affinity": copies("persona_affinity", versions["persona_affinity"], ("customer_id",)),
        "customer_personas": copies("customer_personas", versions["customer_personas"], ("customer_id",)),
        "purchase_events": copies("purchase_events", None, ("customer_id", "event_id")),
    }
    for key in ("product_personas", "products"):
        location = table_location(base_tables.get(key))
        base = DeltaTable(location, version=versions.get(key)).to_pyarrow_table()
        write_deltalake(str(tables / key), base, mode="overwrite")
        written[key] = {"rows": base.num_rows, "version": DeltaTable(str(tables / key)).version()}
    runs = DeltaTable(table_location(base_tables.runs)).to_pyarrow_table()
    row = runs.filter(pc.equal(runs["run_id"], run["run_id"]))
    table_versions = pa.array([[(k, written[k]["version"]) for k in
                                ("persona_affinity", "customer_personas", "product_personas")]],
                              type=runs.schema.field("table_versions").type)
    row = row.set_column(row.schema.get_field_index("table_versions"), runs.schema.field("table_versions"),
                         table_versions)
    write_deltalake(str(tables / "runs"), row, mode="overwrite")
    # The same run id: its cold-start model alias resolves in a copy of the base registry.
    shutil.copy(base_config.workdir_path / "mlflow.db", workdir / "mlflow.db")
    return {"workdir": str(workdir), "tables": written}


# --------------------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(workdir: Path, log_path: Path, timeout: float = 900) -> tuple[subprocess.Popen, int, float]:
    port = free_port()
    started = time.monotonic()
    log = log_path.open("w")
    process = subprocess.Popen([str(PERSONAS), "serve", "--workdir", str(workdir), "--port", str(port)],
                               cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT)
    import http.client

    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"personas serve exited {process.returncode}: {log_path.read_text()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port, time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.25)
    process.kill()
    raise SystemExit(f"personas serve did not come up in {timeout} s: {log_path.read_text()}")


def rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2 ** 20


# --------------------------------------------------------------------------- load generator


def http_request(method: str, path: str, body=None) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" \
           f"Content-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


async def client(port: int, requests: list, latencies: list, outcomes: list) -> None:
    """One keep-alive connection sending its requests one after another."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for scenario, raw, expected in requests:
            started = time.perf_counter()
            try:
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = -1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            latencies.append((scenario, time.perf_counter() - started))
            outcomes.append((scenario, status, expected))
    finally:
        writer.close()


def drive(port: int, requests: list, clients: int) -> dict:
    """Send every request (split round-robin over the clients); figures per scenario and overall."""
    latencies, outcomes = [], []

    async def main():
        shares = [requests[i::clients] for i in range(clients)]
        await asyncio.gather(*(client(port, share, latencies, outcomes) for share in shares))

    started = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - started
    result = {"requests": len(requests), "clients": clients, "seconds": round(elapsed, 3),
              "throughput_rps": round(len(requests) / elapsed, 1),
              "errors": sum(1 for _, status, expected in outcomes if status != expected), "by_scenario": {}}
    for scenario in sorted({s for s, _ in latencies}):
        values = np.array([t for s, t in latencies if s == scenario]) * 1000
        result["by_scenario"][scenario] = {
            "requests": len(values), "p50_ms": round(float(np.percentile(values, 50)), 3),
            "p99_ms": round(float(np.percentile(values, 99)), 3), "max_ms": round(float(values.max()), 3),
            "errors": sum(1 for s, status, expected in outcomes if s == scenario and status != expected),
            "statuses": sorted({status for s, status, _ in outcomes if s == scenario}),
        }
    return result


def workload(config, scale: int, seed: int = 7):
    """Request makers drawn from the served tables (customers, products)."""
    rng = random.Random(seed)
    tables = resolve_tables(config)
    run = latest_complete_run(tables.runs)
    summary = read_arrow(tables.customer_personas, ["customer_id"], run["table_versions"]["customer_personas"])
    known = summary["customer_id"].to_pylist()
    products = sorted(set(read_arrow(tables.product_personas, ["product_id"],
                                     run["table_versions"]["product_personas"])["product_id"].to_pylist()))
    del summary

    def personas():
        if rng.random() < 0.9:
            return "personas", http_request("GET", f"/customers/{rng.choice(known)}/personas"), 200
        return "personas", http_request("GET", f"/customers/unknown-{rng.randrange(10**9)}/personas"), 404

    def cold_start():
        chosen = rng.sample(products, rng.randint(1, 5)) + (["NO-SUCH-PRODUCT"] if rng.random() < 0.2 else [])
        return "cold_start", http_request("POST", "/cold-start", {"products": chosen, "limit": 5}), 200

    def rerank():
        candidates = [{"product_id": p, "base_score": round(rng.random(), 4)} for p in rng.sample(products, 20)]
        return "rerank", http_request("POST", "/rerank", {"customer_id": rng.choice(known),
                                                          "candidates": candidates}), 200

    def query():
        return "query", http_request("POST", "/query", {"where": {"customer_id": rng.choice(known)},
                                                        "select": ["$p", "$why", "persona"], "limit": 3}), 200

    return {"personas": personas, "cold_start": cold_start, "rerank": rerank, "query": query}


def bench_scale(config, scale: int, args, log_dir: Path) -> dict:
    load_before = os.getloadavg()
    process, port, start_s = start_service(config.workdir_path, log_dir / f"serve_scale{scale}.log")
    try:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", port)
        connection.request("GET", "/health")
        health = json.loads(connection.getresponse().read())
        rss_loaded = rss_mb(process.pid)
        make = workload(config, scale)
        scenarios = {}
        warm = [make["personas"]() for _ in range(200)] + [make["cold_start"]() for _ in range(50)]
        drive(port, warm, 1)
        scenarios["personas_sequential"] = drive(port, [make["personas"]() for _ in range(args.sequential)], 1)
        scenarios["personas_concurrent"] = drive(port, [make["personas"]() for _ in range(args.concurrent)],
                                                 args.clients)
        scenarios["cold_start"] = drive(port, [make["cold_start"]() for _ in range(args.other)], 1)
        scenarios["rerank"] = drive(port, [make["rerank"]() for _ in range(args.other)], 1)
        scenarios["query"] = drive(port, [make["query"]() for _ in range(args.other)], 1)
        mixed = [make[rng_choice]() for rng_choice in
                 random.Random(11).choices(["personas", "cold_start", "rerank", "query"], [6, 2, 1, 1],
                                           k=args.concurrent // 2)]
        scenarios["mixed_concurrent"] = drive(port, mixed, args.clients)
        rss_after = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    rows = health["published_rows"]
    return {"scale": scale, "customers": health["customers"], "published_rows": rows,
            "start_s": round(start_s, 1), "rss_mb": round(rss_loaded, 1), "rss_after_mb": round(rss_after, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()], "scenarios": scenarios}


def baseline_rss(log_dir: Path) -> float:
    """RSS of the service with nothing to serve (imports, event loop): subtracted per row."""
    empty = log_dir / "empty_work"
    empty.mkdir(parents=True, exist_ok=True)
    process, _, _ = start_service(empty, log_dir / "serve_empty.log")
    try:
        time.sleep(1)
        return rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(REPO_ROOT / "work"), help="work dir with a complete run")
    parser.add_argument("--scales", default="1,10,100")
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--concurrent", type=int, default=16000)
    parser.add_argument("--other", type=int, default=1000, help="requests of cold-start, rerank and query")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--synthesise-only", action="store_true", help="write the scaled tables, measure nothing")
    parser.add_argument("--out", default=None, help="where synthesised tables and logs go (default: a temp dir)")
    args = parser.parse_args()

    base = load_config(None, workdir=args.workdir)
    if latest_complete_run(resolve_tables(base).runs) is None:
        raise SystemExit(f"no complete run in {args.workdir}: run `personas run --workdir {args.workdir}` first")
    out = Path(args.out) if args.out else Path(os.environ.get("TMPDIR", "/tmp")) / "personas-bench-serve"
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"cpus": os.cpu_count(), "load_average": os.getloadavg(), "workdir": args.workdir}), flush=True)
    baseline = 0.0 if args.synthesise_only else baseline_rss(out)
    print(json.dumps({"baseline_rss_mb": round(baseline, 1)}), flush=True)
    results = []
    for scale in (int(s) for s in args.scales.split(",")):
        config = base
        if scale > 1:
            started = time.monotonic()
            synth = synthesise(base, scale, out / f"scale{scale}")
            config = load_config(None, workdir=str(out / f"scale{scale}"))
            print(json.dumps({"scale": scale, "synthesised_s": round(time.monotonic() - started, 1), **synth}),
                  flush=True)
        if args.synthesise_only:
            continue
        result = bench_scale(config, scale, args, out)
        result["rss_per_million_rows_mb"] = round(result["rss_mb"] / result["published_rows"] * 1e6, 1)
        result["rss_above_baseline_per_million_rows_mb"] = round(
            (result["rss_mb"] - baseline) / result["published_rows"] * 1e6, 1)
        if results:  # what each further million rows costs, above the smallest scale's RSS
            first = results[0]
            result["rss_marginal_per_million_rows_mb"] = round(
                (result["rss_mb"] - first["rss_mb"]) / (result["published_rows"] - first["published_rows"]) * 1e6, 1)
        results.append(result)
        print(json.dumps(result), flush=True)

    if args.synthesise_only:
        return 0
    print("\nscale  customers  rows       RSS MB  GET seq p50/p99 ms  GET x8 req/s  cold p99  rerank p99  "
          "query p99  mixed x8 req/s  errors  load avg")
    for r in results:
        s = r["scenarios"]
        seq, conc = s["personas_sequential"]["by_scenario"]["personas"], s["personas_concurrent"]
        errors = sum(x["errors"] for x in s.values())
        print(f"{r['scale']:>5}  {r['customers']:>9,}  {r['published_rows']:>9,}  {r['rss_mb']:>6.0f}  "
              f"{seq['p50_ms']:>7.2f}/{seq['p99_ms']:<7.2f}    {conc['throughput_rps']:>10,.0f}  "
              f"{s['cold_start']['by_scenario']['cold_start']['p99_ms']:>8.2f}  "
              f"{s['rerank']['by_scenario']['rerank']['p99_ms']:>10.2f}  {s['query']['by_scenario']['query']['p99_ms']:>9.2f}  "
              f"{s['mixed_concurrent']['throughput_rps']:>14,.0f}  {errors:>6}  {r['load_average_before'][0]:.2f}")
    summary = {"targets": TARGETS, "results": [{
        "scale": r["scale"],
        "personas_sequential_p99_ms": r["scenarios"]["personas_sequential"]["by_scenario"]["personas"]["p99_ms"],
        "personas_concurrent_rps": r["scenarios"]["personas_concurrent"]["throughput_rps"],
        "cold_start_p99_ms": r["scenarios"]["cold_start"]["by_scenario"]["cold_start"]["p99_ms"],
        "errors": sum(x["errors"] for x in r["scenarios"].values()),
        "rss_mb": r["rss_mb"], "rss_per_million_rows_mb": r["rss_per_million_rows_mb"],
        "rss_marginal_per_million_rows_mb": r.get("rss_marginal_per_million_rows_mb"),
        "ratios_to_target": {
            "personas_sequential_p99": round(r["scenarios"]["personas_sequential"]["by_scenario"]["personas"]["p99_ms"]
                                             / TARGETS["personas_sequential_p99_ms"], 3),
            "personas_concurrent_rps": round(r["scenarios"]["personas_concurrent"]["throughput_rps"]
                                             / TARGETS["personas_concurrent_rps"], 3),
            "cold_start_p99": round(r["scenarios"]["cold_start"]["by_scenario"]["cold_start"]["p99_ms"]
                                    / TARGETS["cold_start_p99_ms"], 3)},
        "load_average": r["load_average_before"]} for r in results]}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
