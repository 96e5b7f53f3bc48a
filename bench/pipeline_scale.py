"""The whole `personas run` on the synthetic graphs of bench/propagation.py, with its costs.

    python bench/pipeline_scale.py [--quick] [--sizes synth_1m,synth_4m,synth_13m]
                                   [--product-labels off|on|both] [--out FILE]
                                   [--master local] [--master 'local-cluster[2,1,4096]']

Per size and variant it generates the purchases of ``bench/propagation.synthetic`` (planted
personas, Zipf products, heavy-tailed customers), writes them as a Parquet source with
timestamps, quantities and product titles, a taxonomy of the planted personas and recorded
answers (customers: their planted personas; products: the persona that planted them), then
runs the production CLI, ``personas run``, as a subprocess on a fresh work dir: ingest
through ``ingest.source``'s column mapping, the sampling -> replay labelling -> propagation
rounds, the persona model (on, as by default), publishing, MLflow and the views.

It appends one JSON line per run to ``bench/results/pipeline_scale.jsonl``:
- ``total_s``: the CLI's wall time, JVM start included, data generation excluded;
  ``stages``: the pipeline's own stage timer (the run summary's ``seconds``);
  ``model_phases``: the persona model's own phases (``PersonaModel.seconds``: out-of-fold walk,
  votes, profiles, ..., scoring, thresholds);
- ``spark_jobs``, ``jobs_s`` (the union of the jobs' intervals in Spark's event log),
  ``outside_jobs_share`` (1 - jobs_s / the application's span in the event log: driver work,
  MLflow, Python, JVM-side planning) and ``shuffle_bytes`` (read + written over every task);
- ``driver_peak_rss_bytes`` (the driver JVM's VmHWM), ``python_driver_peak_rss_bytes`` and
  ``python_workers_peak_rss_bytes`` (the largest sum of the Python workers' RSS seen at once,
  polled every 0.2 s) from /proc;
- ``outputs``: rows of persona_affinity and customer_personas;
- ``propagation_over_scipy``: the pipeline's ``propagate`` stage per walk over the scipy
  exact affinity of the same graph (bench/propagation.py's reference timing, measured after
  the run in this process, with the same number of seeds: ``sampling.budget`` of customers;
  the median of three timings).

``--master`` (repeatable; default ``local``): ``local`` runs ``personas run`` (the session
factory's ``local[*]``); a ``local-cluster[workers,cores,memory_mb]`` master runs the same job
through ``spark-submit jobs/run_pipeline.py`` (a standalone master and worker JVMs, executors
with their own Python workers; ``executors_peak_rss_bytes`` is their largest sum at once). With
two or more, every run reads the same generated inputs, and each row after the first has
``outputs_compared_with``: per output table, keys present in one run only, mismatched exact
values (rank, source, personas, ambiguity) and the largest difference of probability, score and
confidence, with ``equal`` when every key and value agrees (floats within 1e-9).

``--quick`` is synth_100k with product labels off, for CI. The persona model runs at its
defaults unless ``--model-settings tests`` (3 folds, 15 iterations) asks otherwise; the row's
``model`` records which.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from propagation import SYNTH_SHAPES, synthetic, timed  # noqa: E402

from persona_lib.testing.reference import affinity, seed_matrix, walk_matrices  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "pipeline_scale.jsonl"
SIZES = ("synth_1m", "synth_4m", "synth_13m")
BUDGET = 0.2
OUTPUTS = ("persona_affinity", "customer_personas")
VENV_BIN = REPO_ROOT / ".venv" / "bin"
SUBMIT_DRIVER_MEMORY = "4g"
EVENT_DAYS = 90


def persona_name(index) -> pd.Series | str:
    return f"Persona {index:02d}" if isinstance(index, (int, np.integer)) else index.map("Persona {:02d}".format)


def write_inputs(folder: Path, name: str, seed: int, product_labels: bool, model: dict) -> dict:
    """The source, taxonomy, recorded answers and config of one run; returns their facts."""
    shape = SYNTH_SHAPES[name]
    # seed_fraction 1: every customer's planted personas (the pairs do not depend on it).
    pairs, planted = synthetic(shape, seed_fraction=1.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    source = pd.DataFrame({
        "cust_no": pairs["customer_id"],
        "sku": pairs["product_id"],
        "qty": rng.integers(1, 6, size=len(pairs)).astype(np.float64),
        "sold_at": pd.Timestamp("2026-01-01", tz="UTC")
        + pd.to_timedelta(rng.integers(0, EVENT_DAYS * 86_400, size=len(pairs)), unit="s"),
        "item_title": "synthetic product " + pairs["product_id"].str.zfill(6),
    })
    source_dir = folder / "purchases"
    source_dir.mkdir(parents=True)
    source.to_parquet(source_dir / "part-0.parquet", index=False)

    taxonomy = {"name": "synthetic", "max_personas": 8, "personas": [
        {"name": persona_name(i), "definition": f"Buys mostly the products planted for persona {i:02d}."}
        for i in range(shape.personas)]}
    (folder / "taxonomy.yaml").write_text(yaml.safe_dump(taxonomy, sort_keys=False))
    answers = planted.groupby("customer_id")["persona"].agg("|".join).reset_index()
    answers.rename(columns={"customer_id": "CustomerID", "persona": "personas"}).to_csv(folder / "customer_answers.csv", index=False)
    titles = source[["sku", "item_title"]].drop_duplicates("sku")
    pd.DataFrame({"Description": titles["item_title"],
                  "personas": persona_name(titles["sku"].astype(np.int64) % shape.personas)}).to_csv(
        folder / "product_answers.csv", index=False)

    config = {
        "base": str(REPO_ROOT / "conf" / "local.yaml"),
        "ingest": {"source": {
            "format": "parquet", "path": str(source_dir),
            "columns": {"customer_id": "cust_no", "product_id": "sku", "quantity": "qty", "event_ts": "sold_at",
                        "unit_price": None, "basket_id": None, "title": "item_title", "country": None},
            "key": ["cust_no", "sku"]}},
        "labelling": {"labeller": "replay", "taxonomy": str(folder / "taxonomy.yaml"),
                      "replay_answers": str(folder / "customer_answers.csv"),
                      "products": {"enabled": product_labels, "selection": "popular", "budget": BUDGET,
                                   "replay_answers": str(folder / "product_answers.csv")}},
        "sampling": {"budget": BUDGET},
        "model": model,
    }
    return {"pairs": pairs, "planted": planted, "shape": shape, "config": config}


def write_run_config(folder: Path, config: dict, run_name: str) -> tuple[Path, Path]:
    """One run's config (the inputs' plus its own Spark event log folder): (config file, event log)."""
    event_log = folder / f"eventlog-{run_name}"
    event_log.mkdir()
    run_config = {**config, "spark": {"extra_conf": {
        "spark.eventLog.enabled": "true", "spark.eventLog.dir": event_log.as_uri(),
        "spark.eventLog.compress": "false"}}}
    path = folder / f"config-{run_name}.yaml"
    path.write_text(yaml.safe_dump(run_config, sort_keys=False))
    return path, event_log


def local_cluster_memory_mb(master: str) -> int:
    """The worker memory of ``local-cluster[workers,cores,memory_mb]``."""
    match = re.fullmatch(r"local-cluster\[\s*\d+\s*,\s*\d+\s*,\s*(\d+)\s*\]", master)
    if not match:
        raise ValueError(f"{master!r}: expected local-cluster[workers,cores,memory_mb]")
    return int(match.group(1))


def pipeline_command(master: str, config: Path, workdir: Path) -> list[str]:
    """`personas run` (master "local": the session factory's local[*]), or the same job through
    `spark-submit jobs/run_pipeline.py` on a local-cluster master, as README documents it."""
    job_args = ["--conf", str(config), "--workdir", str(workdir)]
    if master == "local":
        return [str(VENV_BIN / "personas"), "run", *job_args]
    from persona_lib.jars import required_jars

    # Each executor takes its worker's whole memory; the driver runs no tasks here.
    executor_mb = local_cluster_memory_mb(master)
    jars = required_jars(REPO_ROOT / ".jars")
    return [str(VENV_BIN / "spark-submit"), "--master", master, "--driver-memory", SUBMIT_DRIVER_MEMORY,
            "--conf", f"spark.executor.memory={executor_mb}m", "--conf", "spark.ui.enabled=false",
            "--conf", f"spark.executorEnv.PYTHONPATH={REPO_ROOT}",
            "--jars", ",".join(str(j) for j in jars), str(REPO_ROOT / "jobs" / "run_pipeline.py"), *job_args]


class RssPoller:
    """Peak memory of a process tree: the driver JVM, the executor JVMs (spark-submit to a
    local-cluster master), the Python driver and the Python workers."""

    def __init__(self, root: int, interval_s: float = 0.2):
        self.root, self.interval_s = root, interval_s
        self.peak_hwm: dict[str, int] = {"jvm": 0, "python_driver": 0}
        self.workers_peak_sum = 0
        self.executors_peak_sum = 0
        self.load_averages: list[float] = []  # the machine's 1-minute load, once per poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[tuple[int, int]]:
        """(pid, depth below the root) of the root and its descendants, breadth first."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        tree, frontier, depth = [], [self.root], 0
        while frontier:
            tree.extend((pid, depth) for pid in frontier)
            frontier = [child for pid in frontier for child in children.get(pid, [])]
            depth += 1
        return tree

    @staticmethod
    def _memory(pid: int) -> tuple[str, int, int]:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()
        kb = 1024
        return fields["Name"][0], int(fields.get("VmHWM", ["0"])[0]) * kb, int(fields.get("VmRSS", ["0"])[0]) * kb

    def _poll(self) -> None:
        while not self._stop.is_set():
            workers = executors = 0
            driver_jvm_depth = None
            # Breadth first: the driver JVM is the shallowest java (the root under spark-submit,
            # the root's child under `personas run`); deeper ones are executors.
            for pid, depth in self._tree():
                try:
                    name, hwm, rss = self._memory(pid)
                except (OSError, KeyError, IndexError):
                    continue
                if name == "java" and driver_jvm_depth in (None, depth):
                    driver_jvm_depth = depth
                    self.peak_hwm["jvm"] = max(self.peak_hwm["jvm"], hwm)
                elif name == "java":
                    executors += rss
                elif depth == 0 or (depth == 1 and driver_jvm_depth == 0 and name.startswith("python")):
                    # `personas run` itself (named after its script), or the Python driver that
                    # spark-submit's JVM starts.
                    self.peak_hwm["python_driver"] = max(self.peak_hwm["python_driver"], hwm)
                elif name.startswith("python"):
                    workers += rss
            self.workers_peak_sum = max(self.workers_peak_sum, workers)
            self.executors_peak_sum = max(self.executors_peak_sum, executors)
            self.load_averages.append(os.getloadavg()[0])
            self._stop.wait(self.interval_s)


def event_log_figures(folder: Path) -> dict:
    """Jobs, their time and shuffle volume from the application's Spark event log."""
    # Spark 4 rolls the log: eventlog_v2_<app>/events_<n>_<app>, read in n order.
    logs = sorted(folder.glob("eventlog_v2_*/events_*"), key=lambda p: int(p.name.split("_")[1]))
    logs = logs or [p for p in folder.iterdir() if p.is_file()]
    if not logs:
        raise RuntimeError(f"{folder}: no Spark event log")
    job_start: dict[int, int] = {}
    intervals, shuffle_read, shuffle_written, tasks = [], 0, 0, 0
    app_start = app_end = None
    for event in (json.loads(line) for log in logs for line in log.open()):
        kind = event["Event"]
        if kind == "SparkListenerJobStart":
            job_start[event["Job ID"]] = event["Submission Time"]
        elif kind == "SparkListenerJobEnd":
            intervals.append((job_start[event["Job ID"]], event["Completion Time"]))
        elif kind == "SparkListenerTaskEnd":
            metrics = event.get("Task Metrics") or {}
            read = metrics.get("Shuffle Read Metrics") or {}
            shuffle_read += read.get("Remote Bytes Read", 0) + read.get("Local Bytes Read", 0)
            shuffle_written += (metrics.get("Shuffle Write Metrics") or {}).get("Shuffle Bytes Written", 0)
            tasks += 1
        elif kind == "SparkListenerApplicationStart":
            app_start = event["Timestamp"]
        elif kind == "SparkListenerApplicationEnd":
            app_end = event["Timestamp"]
    busy_ms, covered_to = 0, None
    for start, end in sorted(intervals):  # union: overlapping jobs count once
        if covered_to is None or start > covered_to:
            busy_ms += end - start
            covered_to = end
        elif end > covered_to:
            busy_ms += end - covered_to
            covered_to = end
    span_ms = (app_end - app_start) if app_start is not None and app_end is not None else None
    return {
        "spark_jobs": len(intervals), "spark_tasks": tasks, "jobs_s": round(busy_ms / 1000, 2),
        "spark_app_s": round(span_ms / 1000, 2) if span_ms else None,
        "outside_jobs_share": round(1 - busy_ms / span_ms, 3) if span_ms else None,
        "shuffle_read_bytes": shuffle_read, "shuffle_written_bytes": shuffle_written,
        "shuffle_bytes": shuffle_read + shuffle_written,
    }


def delta_files(location: str, version: int) -> dict[str, int] | None:
    """The data files of a local Delta table at ``version`` with their row counts, from its
    log (no Spark). None where a checkpoint has replaced the early commits (not reached by one
    run's tables)."""
    log = Path(location) / "_delta_log"
    files: dict[str, int] = {}
    for number in range(version + 1):
        commit = log / f"{number:020d}.json"
        if not commit.is_file():
            return None
        for action in (json.loads(line) for line in commit.open()):
            if "add" in action:
                files[action["add"]["path"]] = json.loads(action["add"]["stats"])["numRecords"]
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
    return files


def delta_rows(location: str, version: int) -> int | None:
    files = delta_files(location, version)
    return None if files is None else sum(files.values())


def read_delta(table: dict, columns: list[str]) -> pd.DataFrame:
    """``columns`` of one output table (the run summary's location and version) as pandas."""
    files = delta_files(table["location"], table["version"])
    if files is None:
        raise RuntimeError(f"{table['location']}: checkpointed log, read it with Spark")
    parts = [pd.read_parquet(Path(table["location"]) / path, columns=columns) for path in files]
    return pd.concat(parts, ignore_index=True)


# What each output must agree on between two runs of the same inputs: keys, the values compared
# exactly, and the floating-point values compared within COMPARE_TOLERANCE (a sum over other
# partitions may round differently in its last bits).
COMPARED = {
    "persona_affinity": (["customer_id", "persona"], ["rank", "source"], ["probability", "score"]),
    "customer_personas": (["customer_id"], ["personas", "source", "is_ambiguous"], ["confidence"]),
}
COMPARE_TOLERANCE = 1e-9


def compare_outputs(reference: dict, other: dict) -> dict:
    """How the output tables of two runs' summaries differ; ``equal`` when they agree on every key
    and value (floats within COMPARE_TOLERANCE)."""
    report: dict = {}
    for name, (keys, exact, approximate) in COMPARED.items():
        columns = keys + exact + approximate
        left = read_delta(reference["tables"][name], columns)
        right = read_delta(other["tables"][name], columns)
        for frame in (left, right):  # arrays compare as tuples
            for column in exact:
                if frame[column].dtype == object:
                    frame[column] = frame[column].map(lambda v: tuple(v) if v is not None and not isinstance(v, str) else v)
        joined = left.merge(right, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
        both = joined[joined["_merge"] == "both"]
        differences = {
            "rows": [len(left), len(right)],
            "keys_in_one_run_only": int((joined["_merge"] != "both").sum()),
            **{f"{c}_mismatches": int((both[f"{c}_a"] != both[f"{c}_b"]).sum()) for c in exact},
            **{f"{c}_max_abs_diff": float((both[f"{c}_a"] - both[f"{c}_b"]).abs().max() or 0.0) for c in approximate},
            **{f"{c}_null_mismatches": int((both[f"{c}_a"].isna() != both[f"{c}_b"].isna()).sum()) for c in approximate},
        }
        differences["equal"] = (differences["keys_in_one_run_only"] == 0
                                and all(differences[f"{c}_mismatches"] == 0 for c in exact)
                                and all(differences[f"{c}_max_abs_diff"] <= COMPARE_TOLERANCE
                                        and differences[f"{c}_null_mismatches"] == 0 for c in approximate))
        report[name] = differences
    report["equal"] = all(report[name]["equal"] for name in COMPARED)
    return report


SCIPY_REPEATS = 3


def scipy_floor(pairs: pd.DataFrame, planted: pd.DataFrame, lhat: int, beta: float, seed: int) -> float:
    """Seconds of the scipy exact affinity from as many seeded customers as the run labels."""
    walk = walk_matrices(pairs)
    customers = planted["customer_id"].drop_duplicates()
    picked = customers.sample(n=int(round(BUDGET * len(customers))), random_state=seed)
    seeds, _ = seed_matrix(planted[planted["customer_id"].isin(set(picked))], walk.customers, beta)
    # The median of three: one timing of the same product varied 2.5-4.9 s between runs.
    return float(np.median([timed(lambda: affinity(walk, seeds, lhat))[1] for _ in range(SCIPY_REPEATS)]))


def run_pipeline(folder: Path, config: dict, master: str) -> tuple[dict, float, RssPoller, Path, Path]:
    """One pipeline run on ``master``: (its summary, wall seconds, the poller, config file, event log)."""
    run_name = "local" if master == "local" else re.sub(r"[^A-Za-z0-9]+", "-", master).strip("-")
    config_path, event_log = write_run_config(folder, config, run_name)
    command = pipeline_command(master, config_path, folder / f"work-{run_name}")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYSPARK_PYTHON=str(VENV_BIN / "python"),
               PYSPARK_DRIVER_PYTHON=str(VENV_BIN / "python"))
    env.pop("SPARK_HOME", None)  # the venv's pyspark is the Spark home, as for a user
    started = time.perf_counter()
    with open(folder / f"run-{run_name}.stderr", "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                   cwd=str(folder))
        try:
            with RssPoller(process.pid) as poller:
                stdout, _ = process.communicate()
        finally:
            if process.poll() is None:  # interrupted: never leave a Spark job behind
                process.kill()
    total_s = time.perf_counter() - started
    (folder / f"run-{run_name}.stdout").write_text(stdout)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} on {master} exited {process.returncode}; see {folder}/run-{run_name}.*")
    return json.loads(stdout.strip().splitlines()[-1]), total_s, poller, config_path, event_log


def run_size(name: str, product_labels: bool, args) -> Iterator[dict]:
    """One row per master in ``args.masters``, as each run ends, on the same generated inputs;
    rows after the first record how their outputs compare with the first master's."""
    folder = Path(tempfile.mkdtemp(prefix=f"pipeline-scale-{name}-", dir=args.workdir))
    generated = time.perf_counter()
    facts = write_inputs(folder, name, args.seed, product_labels, args.model)
    generate_s = time.perf_counter() - generated
    print(f"== {name} (product labels {'on' if product_labels else 'off'}): inputs in {generate_s:.1f} s, "
          f"{folder}", flush=True)
    from persona_lib.config import load_config

    reference, scipy_s = None, None
    for master in args.masters:
        summary, total_s, poller, config_path, event_log = run_pipeline(folder, facts["config"], master)
        config = load_config(str(config_path), workdir=str(folder / "work"))
        if scipy_s is None:  # after the first run, so that it never shares the machine with one
            scipy_s = scipy_floor(facts["pairs"], facts["planted"], config.propagation.lhat,
                                  config.propagation.beta, args.seed)
        stages = summary["seconds"]
        walks = sum(1 for r in summary["rounds"] if r.get("supersteps") is not None) or len(summary["rounds"])
        propagate_s = stages.get("propagate")
        row = {
            "graph": name, "master": master, "product_labels": product_labels, "edges": len(facts["pairs"]),
            "customers": summary["customers"], "products": int(facts["pairs"]["product_id"].nunique()),
            "personas": facts["shape"].personas, "budget": BUDGET,
            "model": {"cv_folds": config.model.cv_folds, "max_iter": config.model.max_iter},
            "rounds": len(summary["rounds"]),
            "total_s": round(total_s, 1), "generate_s": round(generate_s, 1), "stages": stages,
            "model_phases": summary.get("model_seconds"),
            "propagation_walks": walks, "scipy_s": round(scipy_s, 3),
            "propagation_over_scipy": round(propagate_s / walks / scipy_s, 1) if propagate_s and scipy_s else None,
            **event_log_figures(event_log),
            "driver_peak_rss_bytes": poller.peak_hwm["jvm"],
            "executors_peak_rss_bytes": poller.executors_peak_sum,
            "python_driver_peak_rss_bytes": poller.peak_hwm["python_driver"],
            "python_workers_peak_rss_bytes": poller.workers_peak_sum,
            "outputs": {t: delta_rows(summary["tables"][t]["location"], summary["tables"][t]["version"])
                        for t in OUTPUTS},
            "labelled": summary["labelled"], "supersteps": summary["supersteps"],
            "product_label_summary": summary.get("product_labels"),
            "cores": os.cpu_count(),
            # Other jobs on a shared machine stretch every timing: the load seen during the run says how much.
            "load_average_mean": round(float(np.mean(poller.load_averages)), 1) if poller.load_averages else None,
            "load_average_max": round(max(poller.load_averages), 1) if poller.load_averages else None,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if reference is None:
            reference = (master, summary)
        else:
            row["outputs_compared_with"] = {"master": reference[0], **compare_outputs(reference[1], summary)}
        print(json.dumps(row), flush=True)
        yield row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="synth_100k, product labels off (a few minutes)")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {sorted(SYNTH_SHAPES)}")
    parser.add_argument("--product-labels", choices=("off", "on", "both"), default="both")
    parser.add_argument("--model-settings", choices=("default", "tests"), default=None,
                        help="the persona model at its defaults (the default), or the tests' 3 folds / "
                             "15 iterations")
    parser.add_argument("--master", dest="masters", action="append", default=None,
                        help="local (default: `personas run`, local[*]) or a spark-submit master such as "
                             "local-cluster[2,1,4096] (`spark-submit jobs/run_pipeline.py`); repeat it to run "
                             "each on the same inputs and compare every later run's outputs with the first's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default=None, help="where inputs and work dirs go (default: a temp dir)")
    parser.add_argument("--out", default=str(RESULTS), help="JSON lines file appended to")
    args = parser.parse_args(argv)
    # A timeout's SIGTERM then unwinds through run_size, which stops the pipeline it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = ["synth_100k"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = sorted(set(sizes) - set(SYNTH_SHAPES))
    if unknown:
        parser.error(f"unknown size(s) {unknown}; known: {sorted(SYNTH_SHAPES)}")
    # The persona model runs at its defaults (5 folds, 100 iterations) unless asked otherwise:
    # since the profile fit is one grouped scipy fit, that is about 80 s at 100k pairs.
    settings = args.model_settings or "default"
    args.model = {"cv_folds": 3, "max_iter": 15} if settings == "tests" else {}
    variants = {"off": [False], "on": [True], "both": [False, True]}["off" if args.quick else args.product_labels]
    args.masters = args.masters or ["local"]
    for master in args.masters:
        if master != "local":
            local_cluster_memory_mb(master)  # fail before generating anything
    for name in sizes:
        for product_labels in variants:
            for row in run_size(name, product_labels, args):
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
