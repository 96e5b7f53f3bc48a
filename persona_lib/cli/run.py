"""``personas run``: the whole pipeline (ingest if needed, T rounds, publish, MLflow)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
import threading
import time
from typing import Callable, Iterator, TextIO

from persona_lib.cli import add_common_options, load_app_config, with_options
from persona_lib.config import LABELLERS

log = logging.getLogger("personas.run")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run the whole pipeline: ingest, sample -> label -> propagate rounds, publish",
        description="Ingest if needed, then T rounds of sample -> label -> propagate, then publish the "
                    "persona tables; one MLflow run records it. Resumable: labels already in the "
                    "store are never requested again.",
    )
    add_common_options(parser, writer=True)
    parser.add_argument("--budget", type=float, default=None,
                        help="labelling budget: 0 (no LLM: file labels and overrides only), a fraction of "
                             "customers (< 1) or a whole count (>= 1); default from config")
    parser.add_argument("--rounds", type=int, default=None, help="number of rounds T (default from config)")
    parser.add_argument("--labeller", choices=LABELLERS, default=None,
                        help="labelling backend (default from config)")
    parser.add_argument("--epsilon", type=float, default=None, help="absolute error bound (default: derived)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from persona_lib.config import validate_for_labelling
    from persona_lib.pipeline import run_pipeline
    from persona_lib.spark import get_spark

    config = with_options(load_app_config(args), args, {
        "budget": ("sampling", "budget"), "rounds": ("sampling", "rounds"),
        "labeller": ("labelling", "labeller"), "epsilon": ("propagation", "epsilon")})
    # Taxonomy, labeller and budget are checked before the JVM starts: exit 3 in a second.
    validate_for_labelling(config)
    started = time.perf_counter()
    with terminal_progress(sys.stderr, enabled=not args.quiet) as say:
        spark = get_spark(config)
        summary = run_pipeline(spark, config, progress=say)
    for line in human_summary(summary, time.perf_counter() - started, _location_options(args)):
        log.info("%s", line)
    return summary


@contextlib.contextmanager
def terminal_progress(stream: TextIO, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """The pipeline's progress callback; on a terminal also a live bottom line (tqdm) with the
    latest step and the run's elapsed time, ticking while a long stage runs.

    Nothing of it where stderr is not a terminal (a scheduler's log, a pipe, the tests' capture):
    there the log lines alone are the record."""
    if not (enabled and stream.isatty()):
        yield log.info
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=None, file=stream, leave=False, bar_format="{desc} [{elapsed}]", desc="personas run: starting")
    stopped = threading.Event()

    def tick() -> None:
        while not stopped.wait(1.0):
            bar.refresh()

    def say(message: str) -> None:
        log.info("%s", message)
        bar.set_description_str(f"personas run: {message.strip()[:70]}")

    ticker = threading.Thread(target=tick, name="personas-progress", daemon=True)
    ticker.start()
    try:
        with logging_redirect_tqdm():  # log lines print above the bar instead of through it
            yield say
    finally:
        stopped.set()
        ticker.join()
        bar.close()


def _location_options(args: argparse.Namespace) -> str:
    """The options that point a follow-up command at the same tables as this run."""
    options = []
    for flag, value in (("--conf", args.conf), ("--workdir", args.workdir),
                        ("--catalog", args.catalog), ("--schema", args.schema)):
        if value:
            options.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(options)


def human_summary(summary: dict, elapsed_s: float, location_options: str = "", top: int = 5) -> list[str]:
    """A few lines for the person who started the run: what came out and where to look.

    The JSON result line on stdout carries everything; this is the part worth reading."""
    customers = summary["customers"]
    share = lambda n: f"{100.0 * n / customers:.0f}%" if customers else "-"  # noqa: E731
    personas = summary.get("top_personas") or {}
    top_text = ", ".join(f"{name} ({count})" for name, count in list(personas.items())[:top]) or "none"
    seconds = summary.get("seconds") or {}
    # Stages under half a second (product labelling when it is off) say nothing.
    stages = ", ".join(f"{stage} {value:.0f} s" for stage, value in seconds.items() if value >= 0.5)
    suffix = f" {location_options}" if location_options else ""
    uri = summary["mlflow"]["tracking_uri"]
    mlflow_hint = (f"mlflow ui --backend-store-uri {uri}  (MLflow run {summary['run_id']})"
                   if uri.startswith("sqlite:") else f"MLflow run {summary['run_id']} at {uri}")
    return [
        f"run {summary['run_id']} complete in {elapsed_s:.0f} s",
        f"  customers {customers}: labelled {summary['labelled']} ({share(summary['labelled'])}, "
        f"{summary.get('overridden', 0)} by override), propagated {summary['propagated']} "
        f"({share(summary['propagated'])}), ambiguous {100.0 * summary['ambiguous_share']:.1f}%",
        f"  top personas (customers): {top_text}",
        *([f"  stages: {stages}"] if stages else []),
        f"  look: personas sql \"SELECT * FROM current_customer_personas LIMIT 10\"{suffix}",
        f"        personas query --customer ID{suffix}",
        f"        {mlflow_hint}",
    ]
