"""What ingesting a mapped source costs against reading it.

``personas ingest`` on a mapped source (``ingest.source``) types every row, gives it one
outcome (kept, a quarantine reason, forgotten), caches the classified rows for the outcome
count and the two writes, and writes purchase_events, quarantine, products and the ingest log.
This benchmark runs the production ``ingest.ingest_source`` on the Parquet source that
``bench/pipeline_scale.py`` generates (same mapping, same key), into fresh tables, and times in
the same Spark session:

- the reference: a scan of the source that decodes every column (a ``noop`` write), the floor
  any ingest pays;
- the first ingest (every row new) and a re-run on the same source (nothing changes, nothing
  is committed).

It prints one JSON line: seconds, microseconds per source row and each ingest over the reference.

    python bench/ingest_source.py --graph synth_1m
    python bench/ingest_source.py --graph synth_1m --fast-jvm off   # the JVM's default JIT
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from pipeline_scale import write_inputs  # noqa: E402
from propagation import SYNTH_SHAPES, timed  # noqa: E402

from persona_lib import ingest, ingest_sources, storage  # noqa: E402
from persona_lib.config import load_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graph", default="synth_1m", choices=sorted(SYNTH_SHAPES))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fast-jvm", choices=("config", "on", "off"), default="config",
                        help="spark.fast_jvm: as conf/local.yaml sets it (default), or forced on or off")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-ingest-source-"))
    inputs = write_inputs(folder, args.graph, args.seed, product_labels=False, model={})
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump({**inputs["config"], "workdir": str(folder / "work")}, sort_keys=False))
    config = load_config(config_path)
    if args.fast_jvm != "config":
        config = config.replace("spark", fast_jvm=args.fast_jvm == "on")

    from persona_lib.spark import build_local_spark

    spark = build_local_spark(config)
    tables = storage.resolve_tables(config)
    source = ingest_sources.read_table(spark, config, config.ingest.source, "ingest.source")
    source.write.format("noop").mode("overwrite").save()  # warm the file listing and the reader
    _, reference_s, _ = timed(lambda: source.write.format("noop").mode("overwrite").save())
    first, first_s, _ = timed(lambda: ingest.ingest_source(spark, config, tables))
    rerun, rerun_s, _ = timed(lambda: ingest.ingest_source(spark, config, tables))
    rows = first["rows_in"]
    print(json.dumps({
        "graph": args.graph, "rows": rows, "fast_jvm": config.spark.fast_jvm,
        "reference_scan_s": round(reference_s, 2),
        "first_ingest_s": round(first_s, 2), "first_over_reference": round(first_s / reference_s, 1),
        "first_us_per_row": round(1e6 * first_s / rows, 1),
        "rerun_s": round(rerun_s, 2), "rerun_over_reference": round(rerun_s / reference_s, 1),
        "rows_kept": first["rows_kept"], "quarantined": first["quarantined"],
        "rerun_rows_deleted": rerun["rows_deleted"], "events": first["events"],
    }), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
