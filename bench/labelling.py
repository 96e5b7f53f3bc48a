"""Labelling throughput of the vllm backend on the hardware present, through Spark.

    .venv-vllm/bin/python bench/labelling.py [--customers 64] [--model DIR] [--workdir DIR]
        [--batch-size 32] [--dtype float32] [--max-tokens 256] [--temperature 1.0]

Without --model it builds the tests' tiny random-weight model (CPU smoke figures only; its
answers are noise). With --workdir holding an ingested purchase_events table it labels real
Online Retail customers; otherwise synthetic ones with 20 products each. One warm-up run
(2 customers) starts the engine in the Spark worker; the timed run then labels --customers
others. Prints, as the last line, JSON: customers per second, prompt / generated / cached
tokens per customer, prefix-cache hit rate (cached / prompt tokens), generate() calls,
statuses, and the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=64)
    parser.add_argument("--model", default=None, help="local model directory (default: the tiny test model)")
    parser.add_argument("--workdir", default=None, help="work dir with purchase_events (default: synthetic)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    args = parser.parse_args(argv)

    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from persona_lib import storage
    from persona_lib.config import load_config
    from persona_lib.labelling import label_customers
    from persona_lib.spark import get_spark
    from persona_lib.taxonomy import load_taxonomy

    scratch = Path(tempfile.mkdtemp(prefix="bench-labelling-"))
    config = load_config(REPO / "conf" / "test.yaml", workdir=args.workdir or str(scratch / "work"))
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    # A command-line path: relative to the current directory.
    model = str(Path(args.model).expanduser().resolve()) if args.model else None
    if model is None:
        from persona_lib.testing.tiny_model import build_tiny_model

        model = str(build_tiny_model(scratch / "tiny-model", taxonomy))
    vllm = dataclasses.replace(
        config.labelling.vllm, model_path=model, dtype=args.dtype, enforce_eager=True,
        max_tokens=args.max_tokens, temperature=args.temperature, batch_size=args.batch_size,
        num_workers=1, gpu_memory_utilization=args.gpu_memory_utilization)
    # Labels go to a scratch store so the bench never touches a real label store.
    config = dataclasses.replace(config.replace("labelling", labeller="vllm", vllm=vllm),
                                 tables=dataclasses.replace(config.tables,
                                                            persona_labels=str(scratch / "persona_labels")))
    spark = get_spark(config)
    events_ref = storage.resolve_tables(config).purchase_events
    if args.workdir and events_ref.exists(spark):
        events = events_ref.read(spark)
        source = "online_retail"
    else:
        rows = [(str(c), f"P{(c * 7 + i) % 500}", f"SYNTHETIC PRODUCT TITLE {(c * 7 + i) % 500}",
                 float(1 + (c + i) % 5), dt.datetime(2011, 1, 1) + dt.timedelta(days=i))
                for c in range(args.customers + 2) for i in range(20)]
        events = spark.createDataFrame(rows, "customer_id string, product_id string, "
                                             "product_title string, quantity double, event_ts timestamp")
        source = "synthetic"
    customers = events.select("customer_id").distinct().orderBy("customer_id").limit(args.customers + 2)
    # A handful of ids: one ordered window is fine here.
    ordered = customers.withColumn("n", F.row_number().over(Window.orderBy("customer_id"))).localCheckpoint()
    warmup = ordered.where(F.col("n") <= 2).select("customer_id")
    timed = ordered.where(F.col("n") > 2).select("customer_id")

    started = time.perf_counter()
    label_customers(spark, config, warmup, events, run_id="bench-warmup")
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    summary = label_customers(spark, config, timed, events, run_id="bench")
    elapsed = time.perf_counter() - started
    n = max(summary["llm_calls"], 1)
    tokens = summary["tokens"]
    result = {
        "device": _device(),
        "model": model,
        "data": source,
        "customers": summary["llm_calls"],
        "batch_size": args.batch_size,
        "warmup_s_engine_start_included": round(warmup_s, 1),
        "seconds": round(elapsed, 2),
        "customers_per_s": round(summary["llm_calls"] / elapsed, 3),
        "prompt_tokens_per_customer": round(tokens["prompt_tokens"] / n, 1),
        "generated_tokens_per_customer": round(tokens["generated_tokens"] / n, 1),
        "prefix_cache_hit_rate": round(tokens["cached_tokens"] / max(tokens["prompt_tokens"], 1), 3),
        "generate_calls": summary["generate_calls"],
        "statuses": summary["new_statuses"],
    }
    print(json.dumps(result))
    return result


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    import os
    import platform

    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
