"""``personas verify``: check a work dir's invariants (README "Guarantees").

1. Manifest balance: every ``ingest_log`` row has rows_in = kept + quarantined + forgotten.
2. Nothing both kept and quarantined: no landing record is in ``purchase_events`` and in
   ``quarantine`` (matched by ``OVERLAP_KEYS``).
3. Every ``runs`` row with status complete is readable at its table versions: the versions
   exist and every data file they name is on storage.
4. No tombstoned customer anywhere: in no table holding customer ids (quarantine's raw lines
   included), and in no other file under the work dir (Delta logs, MLflow store and
   artifacts, logs), matched by the keyed hash of every number in them.

Each check returns violations as text; none names a customer id. The checks read the columns
the tables have now, so a column added to a contract later (a content hash, a status) only
needs its check here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from persona_lib import forget, ingest, storage
from persona_lib.config import AppConfig
from persona_lib.storage import Tables
from persona_lib.tombstones import UNREADABLE_ID_REASONS, customer_hash, raw_id_tokens, tombstone_key, tombstoned

# (manifest, events, quarantine) table keys of each cut.
CUTS = (("ingest_log", "purchase_events", "quarantine"),
        ("paper_ingest_log", "paper_purchase_events", "paper_quarantine"))
# How a record is named in both purchase_events and quarantine, in order of preference.
OVERLAP_KEYS = (("content_sha256", "line_number"), ("source_file", "line_number"))
BALANCE_PARTS = ("rows_kept", "rows_quarantined", "rows_forgotten")
# Manifest statuses whose rows are in the tables.
COMMITTED_STATUSES = (ingest.INGESTED, ingest.REPLACED)
# How many offending rows a violation lists.
SHOWN = 5
# A number in a file that may be an id: not part of a longer word or number (hex run ids,
# decimals), optionally followed by ".0".
_FILE_ID_TOKEN = re.compile(r"(?<![0-9A-Za-z_.])([0-9]+)(?:\.0+)?(?![0-9A-Za-z_])")
# JSON fields that hold numbers or product codes, never customer ids (Delta log sizes, times,
# row counts as text; the why records' products).
_NOT_ID_KEYS = {"product_id", "title", "operationMetrics", "size", "modificationTime", "timestamp", "numRecords", "version",
                     "readVersion", "nullCount", "deletionTimestamp", "inCommitTimestamp", "sizeInBytes",
                     "numFiles", "numMetadata", "numProtocol", "tableSizeBytes", "histogramOpt"}


def verify_workdir(spark: SparkSession, config: AppConfig) -> dict:
    tables = storage.resolve_tables(config)
    checks = {
        "manifest_balance": check_manifest_balance(spark, tables),
        "kept_and_quarantined": check_kept_and_quarantined(spark, tables),
        "runs_readable": check_runs_readable(spark, tables),
        "no_tombstoned_customer": check_no_tombstoned_customer(spark, config, tables),
    }
    violations = [f"{name}: {text}" for name, found in checks.items() for text in found]
    return {"ok": not violations, "violations": violations,
            "checks": {name: ("ok" if not found else f"{len(found)} violation(s)") for name, found in checks.items()},
            "workdir": str(config.workdir_path)}


def check_manifest_balance(spark: SparkSession, tables: Tables) -> list[str]:
    found = []
    for log_key, _, _ in CUTS:
        ref = tables.get(log_key)
        if not ref.exists(spark):
            continue
        manifest = ref.read(spark)
        if "status" in manifest.columns:
            # Only a delivery whose rows were written carries counts to balance; a failed or
            # conflicting one wrote nothing.
            manifest = manifest.where(F.col("status").isin(*COMMITTED_STATUSES))
        parts = [F.coalesce(F.col(c), F.lit(0)) for c in BALANCE_PARTS if c in manifest.columns]
        accounted = parts[0]
        for part in parts[1:]:
            accounted = accounted + part
        unbalanced = manifest.where(F.col("rows_in") != accounted)
        count = unbalanced.count()
        if count:
            shown = [f"{r['source_file']} (in {r['rows_in']})" for r in unbalanced.limit(SHOWN).collect()]
            found.append(f"{log_key}: {count} row(s) where rows_in != {' + '.join(BALANCE_PARTS)}: "
                         f"{', '.join(shown)}")
    return found


def check_kept_and_quarantined(spark: SparkSession, tables: Tables) -> list[str]:
    found = []
    for _, events_key, quarantine_key in CUTS:
        events_ref, quarantine_ref = tables.get(events_key), tables.get(quarantine_key)
        if not (events_ref.exists(spark) and quarantine_ref.exists(spark)):
            continue
        events, quarantine = events_ref.read(spark), quarantine_ref.read(spark)
        keys = next((list(k) for k in OVERLAP_KEYS
                     if set(k) <= set(events.columns) and set(k) <= set(quarantine.columns)), None)
        if keys is None:
            found.append(f"{events_key}/{quarantine_key}: no common record key among {OVERLAP_KEYS}")
            continue
        # Shown as file:line, the way a user finds the record, whatever the key matched on.
        named = [c for c in ("source_file", "line_number") if c in events.columns]
        both = events.select(*dict.fromkeys(keys + named)).join(quarantine.select(*keys), keys, "inner")
        count = both.count()
        if count:
            label = named if len(named) == 2 else keys
            shown = [":".join(str(r[k]) for k in label) for r in both.orderBy(*keys).limit(SHOWN).collect()]
            found.append(f"{count} record(s) both in {events_key} and {quarantine_key} "
                         f"(by {', '.join(keys)}): {', '.join(shown)}")
    return found


def check_runs_readable(spark: SparkSession, tables: Tables) -> list[str]:
    ref = tables.runs
    if not ref.exists(spark):
        return []
    found = []
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    jvm = spark.sparkContext._jvm
    for run in ref.read(spark).where(F.col("status") == "complete").collect():
        for key, version in sorted((run["table_versions"] or {}).items()):
            table = tables.get(key)
            try:
                files = table.read(spark, version=int(version)).inputFiles()
            except Exception as exc:  # noqa: BLE001 - any failure to resolve the version is the finding
                found.append(f"run {run['run_id']}: {key}@v{version} cannot be read: {str(exc).splitlines()[0][:200]}")
                continue
            missing = 0
            for name in files:
                path = jvm.org.apache.hadoop.fs.Path(name)
                if not path.getFileSystem(hadoop).exists(path):
                    missing += 1
            if missing:
                found.append(f"run {run['run_id']}: {key}@v{version} names {missing} data file(s) "
                             "that are no longer on storage")
    return found


def check_no_tombstoned_customer(spark: SparkSession, config: AppConfig, tables: Tables) -> list[str]:
    """``config``: the tombstone key and the work dir whose files are searched."""
    tombstones_ref = tables.tombstones
    if not tombstones_ref.exists(spark):
        return []
    tombstones = tombstones_ref.read(spark)
    if not tombstones.limit(1).count():
        return []
    key = tombstone_key(config.forget)
    found = []
    for ref in forget.id_tables(spark, tables):
        table = ref.read(spark)
        count = tombstoned(table, tombstones, key).count()
        if "raw_line" in table.columns:
            count += _tombstoned_raw_lines(table, tombstones, key).count()
        if count:
            found.append(f"{ref.name}: {count} row(s) of tombstoned customers")
    # Tombstones grow with deletion requests, not with customers: a set on the driver.
    hashes = {r["customer_hash"] for r in tombstones.select("customer_hash").collect()}
    for path, hits in _files_with_tombstoned_ids(config, hashes, key):
        found.append(f"{path}: mentions {hits} tombstoned customer id(s)")
    return found


def _tombstoned_raw_lines(table: DataFrame, tombstones: DataFrame, key: bytes) -> DataFrame:
    unreadable = table.where(F.col("reason").isin(*UNREADABLE_ID_REASONS)) if "reason" in table.columns else table
    tokens = unreadable.select(F.explode(raw_id_tokens(F.col("raw_line"))).alias("token"))
    return tombstoned(tokens, tombstones, key, id_column="token")


def _files_with_tombstoned_ids(config: AppConfig, hashes: set[str], key: bytes) -> Iterator[tuple[str, int]]:
    """Files under the work dir (data files of the tables aside: those are read as tables)
    that hold a number whose keyed hash is a tombstone."""
    root = config.workdir_path
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        if not path.is_file() or _is_table_data_file(path) or path.name.startswith("personas.lock"):
            continue
        hits = {token for token in _tokens_of(path) if customer_hash(token, key) in hashes}
        if hits:
            yield str(path.relative_to(root)), len(hits)


def _is_table_data_file(path: Path) -> bool:
    return path.suffix == ".parquet" and "_delta_log" not in path.parts


def _tokens_of(path: Path) -> set[str]:
    if path.suffix == ".json":
        texts: Iterable[str] = _json_strings(path)
    elif "_delta_log" in path.parts and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        texts = [json.dumps(pq.read_table(path).to_pylist(), default=str)]
    else:
        texts = [path.read_bytes().decode("latin-1")]
    tokens = set()
    for text in texts:
        tokens.update(str(int(m.group(1))) for m in _FILE_ID_TOKEN.finditer(text))
    return tokens


def _json_strings(path: Path) -> Iterator[str]:
    """The text values of a JSON (or JSON lines) file, nested JSON text parsed too, without
    the fields that hold numbers or product codes, never ids: a product code equal to an id
    is not the customer. Statistics (minValues, maxValues) count only for id-bearing columns."""
    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                if k in _NOT_ID_KEYS:
                    continue
                if k in ("minValues", "maxValues") and isinstance(v, dict):
                    v = {c: x for c, x in v.items() if c in storage.ID_BEARING_COLUMNS}
                yield from walk(v)
        elif isinstance(value, list):
            for v in value:
                yield from walk(v)
        elif isinstance(value, str):
            if value[:1] in ("{", "["):
                try:
                    yield from walk(json.loads(value))
                    return
                except ValueError:
                    pass
            yield value

    text = path.read_text(errors="replace")
    try:
        yield from walk(json.loads(text))
        return
    except ValueError:
        pass
    for line in text.splitlines():
        try:
            yield from walk(json.loads(line))
        except ValueError:
            yield line
