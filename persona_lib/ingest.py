"""Landing CSV files -> the purchase_events, products and quarantine Delta tables.

Each landing file is read whole (``binaryFile``: a file is never split, so line numbers are
exact) and cut into physical lines by a Python worker; Spark SQL then types the fields and
gives every line exactly one outcome: kept, quarantined with one reason, or dropped because
its customer was forgotten (tombstones). Nothing is lost: per file, lines in = kept +
quarantined + forgotten, checked before anything is written.

``event_id`` = sha256(source file name, line number), so re-reading the same or overlapping
files adds nothing: events and quarantine rows are MERGEd on their keys.

Two cuts share this code: ``default`` (production cleaning) and ``paper``, the GPLR paper's
OnlineRetail cut (products keyed by stripped title, postage and zero-price lines kept, eight
countries dropped), which reproduces its 4,297 customers / 3,846 products / 263,267 pairs.
"""

from __future__ import annotations

import csv
import gzip
import uuid
from pathlib import Path
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterator, Optional

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType
from pyspark.sql.window import Window

from persona_lib import contracts, storage
from persona_lib.config import AppConfig
from persona_lib.errors import InputError
from persona_lib.forget import tombstone_key

# Every rejection reason, in the order they are tested: a line gets the first that applies.
REASONS = (
    "malformed_line",
    "unparsable_value",
    "missing_customer",
    "cancellation",
    "excluded_country",  # paper cut only
    "non_positive_quantity",
    "non_positive_price",
    "non_product_code",
    "duplicate_line",
)

# The landing columns as they are named while still raw strings (Spark's names are case-blind,
# so "Quantity" would clash with the typed "quantity").
RAW_COLUMNS = {
    "InvoiceNo": "raw_invoice_no", "StockCode": "raw_stock_code", "Description": "raw_description",
    "Quantity": "raw_quantity", "InvoiceDate": "raw_invoice_date", "UnitPrice": "raw_unit_price",
    "CustomerID": "raw_customer_id", "Country": "raw_country",
}

LINES_SCHEMA = StructType([
    StructField("source_file", StringType(), False),
    StructField("line_number", LongType(), False),
    StructField("kind", StringType(), False),  # data | header | empty | undecodable
    StructField("raw_line", StringType(), True),
    StructField("fields", ArrayType(StringType(), True), True),
])


@dataclass(frozen=True)
class CutRules:
    """What one cut keeps; the paper cut is the recipe in data/gplr_online_retail/README.md."""

    name: str
    product_key: str  # "stock_code" | "title"
    drop_non_positive_quantity: bool
    drop_non_positive_price: bool
    drop_non_product_codes: bool
    excluded_countries: tuple[str, ...]
    events_table: str
    products_table: str
    quarantine_table: str
    log_table: str


def cut_rules(config: AppConfig, cut: str) -> CutRules:
    if cut == "default":
        return CutRules("default", "stock_code", True, True, True, (),
                        "purchase_events", "products", "quarantine", "ingest_log")
    if cut == "paper":
        return CutRules("paper", "title", False, False, False, config.ingest.paper_excluded_countries,
                        "paper_purchase_events", "paper_products", "paper_quarantine", "paper_ingest_log")
    raise InputError(f"unknown cut {cut!r}: expected 'default' or 'paper'")


# --------------------------------------------------------------------------- reading


def read_landing_lines(spark: SparkSession, landing: str, file_glob: str) -> DataFrame:
    """One row per physical line of every landing file, with exact 1-based line numbers."""
    list_local_files(landing, file_glob)
    try:
        files = (
            spark.read.format("binaryFile")
            .option("pathGlobFilter", file_glob)
            .option("recursiveFileLookup", "false")
            .load(landing)
            .select("path", "content")
        )
    except Exception as exc:  # Spark's AnalysisException names the path; keep that message
        raise InputError(f"cannot read landing folder {landing}: {exc}") from exc
    return files.mapInPandas(_split_lines, LINES_SCHEMA)


def list_local_files(landing: str, file_glob: str) -> Optional[list[str]]:
    """Names of the landing files on local disk (None for remote storage, which Spark lists)."""
    if "://" in landing or landing.startswith("dbfs:"):
        return None
    folder = Path(landing)
    if not folder.exists():
        raise InputError(f"landing folder not found: {landing}")
    if not folder.is_dir():
        raise InputError(f"landing path is not a folder: {landing}")
    return sorted(p.name for p in folder.glob(file_glob) if p.is_file())


def _split_lines(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        rows: list[tuple] = []
        for path, content in zip(batch["path"], batch["content"]):
            rows.extend(_file_lines(str(path), bytes(content)))
        yield pd.DataFrame(rows, columns=[f.name for f in LINES_SCHEMA.fields])


def _file_lines(path: str, content: bytes) -> list[tuple]:
    name = PurePosixPath(path).name
    if name.endswith(".gz"):
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError) as exc:
            return [(name, 0, "undecodable", f"not a valid gzip file: {exc}", None)]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [(name, 0, "undecodable", f"not UTF-8 text: {exc}", None)]
    lines = text.splitlines()
    if not lines:
        return [(name, 0, "empty", None, None)]
    out = [(name, 1, "header", lines[0], _parse_csv_line(lines[0]))]
    for index, line in enumerate(lines[1:], start=2):
        out.append((name, index, "data", line, _parse_csv_line(line)))
    return out


def _parse_csv_line(line: str) -> Optional[list[str]]:
    try:
        rows = list(csv.reader([line], strict=True))
    except csv.Error:
        return None
    return rows[0] if rows else []


def check_files(lines: DataFrame, listed_files: Optional[list[str]] = None) -> list[str]:
    """The landing files, after checking each one's header; raises naming every bad file.

    ``listed_files``: the file names found on local disk, when known. Spark skips zero-byte
    files, so a name listed but never read is an empty file.
    """
    file_rows = lines.where(F.col("kind") != "data").select("source_file", "kind", "raw_line", "fields").collect()
    seen = {r.source_file for r in file_rows}
    problems = [f"{name}: the file is empty (expected a header line)"
                for name in sorted(set(listed_files or ()) - seen)]
    if not file_rows and not problems:
        raise InputError("empty input: no landing file matched (check ingest.landing and ingest.file_glob)")
    for row in sorted(file_rows, key=lambda r: r.source_file):
        if row.kind == "empty":
            problems.append(f"{row.source_file}: the file is empty (expected a header line)")
        elif row.kind == "undecodable":
            problems.append(f"{row.source_file}: {row.raw_line}")
        elif tuple(f.strip() for f in (row.fields or [])) != contracts.RAW_FIELDS:
            problems.append(
                f"{row.source_file}: wrong columns {list(row.fields or [])}; "
                f"expected {list(contracts.RAW_FIELDS)}"
            )
    if problems:
        raise InputError("bad landing file(s):\n  " + "\n  ".join(problems))
    return sorted(r.source_file for r in file_rows)


# --------------------------------------------------------------------------- classifying


def classify_lines(lines: DataFrame, rules: CutRules, non_product_codes: tuple[str, ...],
                   timestamp_format: str) -> DataFrame:
    """Type every data line and give it one ``reason`` (null = kept)."""
    data = lines.where(F.col("kind") == "data")
    n_fields = F.coalesce(F.size("fields"), F.lit(-1))
    raw = data.select(
        "source_file", "line_number", "raw_line", "fields",
        (n_fields == len(contracts.RAW_FIELDS)).alias("well_formed"),
        *[F.when(n_fields == len(contracts.RAW_FIELDS), F.col("fields")[i]).alias(RAW_COLUMNS[name])
          for i, name in enumerate(contracts.RAW_FIELDS)],
    )
    blank = lambda c: F.coalesce(F.trim(F.col(c)), F.lit("")) == ""  # noqa: E731
    customer_decimal = F.expr("try_cast(trim(raw_customer_id) AS DECIMAL(20, 4))")
    typed = raw.select(
        "*",
        F.expr("try_cast(trim(raw_quantity) AS INT)").alias("quantity"),
        F.expr("try_cast(trim(raw_unit_price) AS DOUBLE)").alias("unit_price"),
        F.expr(f"try_to_timestamp(trim(raw_invoice_date), '{timestamp_format}')").alias("event_ts"),
        customer_decimal.alias("_customer_decimal"),
        F.upper(F.trim(F.col("raw_stock_code"))).alias("stock_code"),
        F.regexp_replace(F.col("raw_description"), r"^\s+|\s+$", "").alias("title"),
    )
    customer_unparsable = ~blank("raw_customer_id") & (
        F.col("_customer_decimal").isNull()
        | (F.col("_customer_decimal") != F.floor(F.col("_customer_decimal")))
        | (F.col("_customer_decimal") < 0)
    )
    title_missing = F.coalesce(F.col("title"), F.lit("")) == ""
    product_unkeyable = title_missing if rules.product_key == "title" else blank("raw_stock_code")
    unparsable = (
        F.col("quantity").isNull() | F.col("unit_price").isNull() | F.col("event_ts").isNull()
        | blank("raw_invoice_no") | product_unkeyable | customer_unparsable
    )
    unparsable_detail = F.concat_ws(", ", F.array_compact(F.array(
        F.when(F.col("quantity").isNull(), F.lit("Quantity")),
        F.when(F.col("unit_price").isNull(), F.lit("UnitPrice")),
        F.when(F.col("event_ts").isNull(), F.lit("InvoiceDate")),
        F.when(blank("raw_invoice_no"), F.lit("InvoiceNo")),
        F.when(product_unkeyable, F.lit("Description" if rules.product_key == "title" else "StockCode")),
        F.when(customer_unparsable, F.lit("CustomerID")),
    )))
    reason = (
        F.when(~F.col("well_formed"), F.lit("malformed_line"))
        .when(unparsable, F.lit("unparsable_value"))
        .when(blank("raw_customer_id"), F.lit("missing_customer"))
        .when(F.upper(F.trim(F.col("raw_invoice_no"))).startswith("C"), F.lit("cancellation"))
    )
    if rules.excluded_countries:
        reason = reason.when(F.trim(F.col("raw_country")).isin(*rules.excluded_countries), F.lit("excluded_country"))
    if rules.drop_non_positive_quantity:
        reason = reason.when(F.col("quantity") <= 0, F.lit("non_positive_quantity"))
    if rules.drop_non_positive_price:
        reason = reason.when(F.col("unit_price") <= 0, F.lit("non_positive_price"))
    if rules.drop_non_product_codes:
        reason = reason.when(F.col("stock_code").isin(*non_product_codes), F.lit("non_product_code"))
    detail = (
        F.when(~F.col("well_formed"), F.concat(F.lit("expected 8 fields, found "),
                                               n_fields.cast("string")))
        .when(unparsable, F.concat(F.lit("unparsable: "), unparsable_detail))
    )
    classified = typed.select("*", reason.alias("reason"), detail.alias("detail")).drop("fields")
    # A line identical in every field to an earlier line of the same invoice (the invoice
    # number is one of the fields) is a duplicate; the first occurrence is kept.
    first_seen = Window.partitionBy(*RAW_COLUMNS.values()).orderBy("source_file", "line_number")
    duplicate = F.when(F.col("reason").isNull() & (F.row_number().over(first_seen) > 1), F.lit("duplicate_line"))
    customer_id = F.col("_customer_decimal").cast("bigint").cast("string")
    product_id = F.col("title") if rules.product_key == "title" else F.col("stock_code")
    return classified.select(
        *[c for c in classified.columns if c != "reason"],
        F.coalesce(F.col("reason"), duplicate).alias("reason"),
        F.when(F.col("well_formed") & ~blank("raw_customer_id") & ~customer_unparsable, customer_id).alias("customer_id"),
        product_id.alias("product_id"),
    )


def drop_forgotten(classified: DataFrame, tombstones: Optional[DataFrame], key: Optional[bytes] = None) -> DataFrame:
    """Mark lines of forgotten customers: they go to no table, not even quarantine.

    A line is forgotten when the keyed hash of its customer id is a tombstone, or, for a line
    whose CustomerID could not be read (malformed, unparsable), when any number of its raw
    text is. ``key`` is ``persona_lib.forget.tombstone_key(config)``.
    """
    if tombstones is None:
        return classified.withColumn("forgotten", F.lit(False))
    from persona_lib.forget import UNREADABLE_ID_REASONS, customer_hash_column, raw_id_tokens

    if key is None:
        raise ValueError("drop_forgotten needs the tombstone key (persona_lib.forget.tombstone_key)")
    hashes = tombstones.select(F.col("customer_hash").alias("_forgotten_hash")).distinct()
    by_id = classified.withColumn("_customer_hash", customer_hash_column(F.col("customer_id"), key))
    by_id = (by_id.join(F.broadcast(hashes.withColumn("_hit", F.lit(True))),
                        by_id["_customer_hash"] == F.col("_forgotten_hash"), "left")
             .drop("_customer_hash", "_forgotten_hash"))
    by_raw_line = (
        classified.where(F.col("customer_id").isNull() & F.col("reason").isin(*UNREADABLE_ID_REASONS))
        .select("source_file", "line_number", F.explode(raw_id_tokens(F.col("raw_line"))).alias("_token"))
        .withColumn("_token_hash", customer_hash_column(F.col("_token"), key))
        .join(F.broadcast(hashes), F.col("_token_hash") == F.col("_forgotten_hash"), "left_semi")
        .select("source_file", "line_number", F.lit(True).alias("_raw_hit")).distinct()
    )
    return (
        by_id.join(F.broadcast(by_raw_line), ["source_file", "line_number"], "left")
        .withColumn("forgotten", F.coalesce(F.col("_hit"), F.col("_raw_hit"), F.lit(False)))
        .drop("_hit", "_raw_hit")
    )


def to_events(classified: DataFrame, ingested_at) -> DataFrame:
    kept = classified.where(F.col("reason").isNull() & ~F.col("forgotten"))
    return kept.select(
        F.sha2(F.concat_ws(":", "source_file", F.col("line_number").cast("string")), 256).alias("event_id"),
        "customer_id",
        "product_id",
        F.col("title").alias("product_title"),
        F.trim(F.col("raw_invoice_no")).alias("invoice_no"),
        "quantity",
        "unit_price",
        "event_ts",
        F.trim(F.col("raw_country")).alias("country"),
        "source_file",
        "line_number",
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
    )


def to_quarantine(classified: DataFrame, ingested_at) -> DataFrame:
    rejected = classified.where(F.col("reason").isNotNull() & ~F.col("forgotten"))
    return rejected.select(
        "source_file", "line_number", "reason", "detail", "raw_line",
        F.col("raw_invoice_no").alias("invoice_no"),
        F.col("raw_stock_code").alias("stock_code"),
        F.col("raw_description").alias("description"),
        F.col("raw_quantity").alias("quantity"),
        F.col("raw_invoice_date").alias("invoice_date"),
        F.col("raw_unit_price").alias("unit_price"),
        F.col("raw_customer_id").alias("customer_id"),
        F.col("raw_country").alias("country"),
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
    )


def event_table_sizes(events: DataFrame) -> dict:
    """customers, products, distinct customer-product pairs and events of a purchase_events table."""
    return events.agg(
        F.countDistinct("customer_id").alias("customers"),
        F.countDistinct("product_id").alias("products"),
        F.countDistinct("customer_id", "product_id").alias("pairs"),
        F.count(F.lit(1)).alias("events"),
    ).first().asDict()


def products_from_events(events: DataFrame) -> DataFrame:
    """One row per product; its title is the most frequent one (ties: the smallest)."""
    title_counts = events.groupBy("product_id", "product_title").count()
    best_title = Window.partitionBy("product_id").orderBy(F.desc("count"), F.asc("product_title"))
    titles = (
        title_counts.withColumn("_rank", F.row_number().over(best_title))
        .where("_rank = 1").select("product_id", F.col("product_title").alias("title"))
    )
    stats = events.groupBy("product_id").agg(
        F.min("event_ts").alias("first_seen"),
        F.max("event_ts").alias("last_seen"),
        F.count(F.lit(1)).alias("events"),
        F.countDistinct("customer_id").alias("customers"),
    )
    return stats.join(titles, "product_id")


# --------------------------------------------------------------------------- the job


def ingest(spark: SparkSession, config: AppConfig, cut: str = "default",
           landing: Optional[str] = None) -> dict:
    """Run one ingestion; returns the summary the CLI prints (counts of this run, table sizes after)."""
    rules = cut_rules(config, cut)
    landing_path = landing or str(config.resolve_path(config.ingest.landing))
    ingested_at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s").to_pydatetime()
    ingest_id = uuid.uuid4().hex

    lines = read_landing_lines(spark, landing_path, config.ingest.file_glob)
    lines = lines.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        files = check_files(lines, list_local_files(landing_path, config.ingest.file_glob))
        tombstones_ref = storage.table_ref(config, "tombstones")
        tombstones = tombstones_ref.read(spark) if tombstones_ref.exists(spark) else None
        classified = drop_forgotten(
            classify_lines(lines, rules, config.ingest.non_product_codes, config.ingest.timestamp_format),
            tombstones, tombstone_key(config) if tombstones is not None else None,
        ).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            per_file = _per_file_counts(lines, classified)
            reasons = {r["reason"]: r["count"] for r in
                       classified.where(F.col("reason").isNotNull() & ~F.col("forgotten"))
                       .groupBy("reason").count().collect()}
            events_ref = storage.table_ref(config, rules.events_table)
            quarantine_ref = storage.table_ref(config, rules.quarantine_table)
            storage.merge_insert_new(spark, to_events(classified, ingested_at), events_ref,
                                     contracts.PURCHASE_EVENTS, ["event_id"])
            storage.merge_insert_new(spark, to_quarantine(classified, ingested_at), quarantine_ref,
                                     contracts.QUARANTINE, ["source_file", "line_number"])
        finally:
            classified.unpersist()
    finally:
        lines.unpersist()

    products_ref = storage.table_ref(config, rules.products_table)
    events_df = events_ref.read(spark)
    storage.merge_upsert(spark, products_from_events(events_df), products_ref, contracts.PRODUCTS, ["product_id"])
    log_ref = storage.table_ref(config, rules.log_table)
    log_rows = [(ingest_id, f, c["rows_in"], c["rows_kept"], c["rows_quarantined"], c["rows_forgotten"], ingested_at)
                for f, c in sorted(per_file.items())]
    storage.ensure_table(spark, log_ref, contracts.INGEST_LOG)
    storage.append(spark.createDataFrame(log_rows, contracts.INGEST_LOG), log_ref, contracts.INGEST_LOG)

    sizes = event_table_sizes(events_df)
    totals = {k: sum(c[k] for c in per_file.values())
              for k in ("rows_in", "rows_kept", "rows_quarantined", "rows_forgotten")}
    return {
        "cut": rules.name,
        "landing": landing_path,
        "files": len(files),
        "customers": sizes["customers"],
        "products": sizes["products"],
        "pairs": sizes["pairs"],
        "events": sizes["events"],
        "rows_in": totals["rows_in"],
        "rows_kept": totals["rows_kept"],
        "quarantined": {r: int(reasons.get(r, 0)) for r in REASONS if r in reasons or r != "excluded_country"
                        or rules.excluded_countries},
        "forgotten": totals["rows_forgotten"],
        "balanced": True,
        "tables": {ref.name: ref.summary(spark) for ref in (events_ref, products_ref, quarantine_ref, log_ref)},
    }


def _per_file_counts(lines: DataFrame, classified: DataFrame) -> dict[str, dict[str, int]]:
    """Per file: lines in and their outcomes; raises if any file does not balance."""
    lines_in = {r["source_file"]: r["count"] for r in
                lines.where(F.col("kind") == "data").groupBy("source_file").count().collect()}
    outcomes = classified.groupBy("source_file").agg(
        F.sum(F.when(F.col("reason").isNull() & ~F.col("forgotten"), 1).otherwise(0)).alias("kept"),
        F.sum(F.when(F.col("reason").isNotNull() & ~F.col("forgotten"), 1).otherwise(0)).alias("quarantined"),
        F.sum(F.when(F.col("forgotten"), 1).otherwise(0)).alias("forgotten"),
    ).collect()
    counts = {f: {"rows_in": n, "rows_kept": 0, "rows_quarantined": 0, "rows_forgotten": 0}
              for f, n in lines_in.items()}
    for row in outcomes:
        entry = counts[row["source_file"]]
        entry.update(rows_kept=int(row["kept"]), rows_quarantined=int(row["quarantined"]),
                     rows_forgotten=int(row["forgotten"]))
    unbalanced = [f for f, c in counts.items()
                  if c["rows_in"] != c["rows_kept"] + c["rows_quarantined"] + c["rows_forgotten"]]
    if unbalanced:
        raise RuntimeError(f"lines lost in ingestion (in != kept + quarantined + forgotten) for {unbalanced[:5]}")
    return counts
