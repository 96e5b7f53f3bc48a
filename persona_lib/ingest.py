"""Landing CSV files -> the purchase_events, products and quarantine Delta tables, with a
file manifest (``ingest_log``) that makes ingestion content-addressed and all-or-nothing.

Identity. A file is its content: ``content_sha256`` (after gunzip). The manifest holds one
row per (file name, content) with a status:

- ``ingested``: the content whose rows the tables hold for that name;
- ``replaced``: a name's earlier content, swapped out under ``ingest.on_changed_file: replace``;
- ``conflicting_redelivery``: a changed file under a name already ingested, refused under
  ``reject`` (the default): nothing of it is written;
- ``failed``: a file that could not be read (corrupt gzip, not UTF-8, empty, wrong header),
  with the reason. The other files of the delivery are ingested regardless.

Content already ingested (under any name) is skipped without parsing, so a re-run commits
nothing. ``event_id`` = sha256(content_sha256:line number): a record's key comes from the
file content and its position in it, never from the file name.

Records. Each landing file is read whole (``binaryFile``) and cut into CSV records by
``persona_lib.ingest_files`` in a Python worker; Spark SQL then types the fields and gives
every record exactly one outcome: kept, quarantined with one reason, or dropped because its
customer was forgotten (tombstones).

Commits. Events, then quarantine, then products, then the manifest rows: the manifest row is
the commit marker. Each table's rows for a content being ingested are written in one MERGE
that also removes that content's earlier rows (a half-written earlier attempt), a replaced
content's rows and rows of content no manifest row accounts for; so the next run repairs a
run that died between two commits, and running it twice changes nothing. Before the first
commit the invariants are checked: per file, records in = kept + quarantined + forgotten;
no record is both kept and quarantined; every event's content has an ``ingested`` manifest
row once the run commits.

Two cuts share this code: ``default`` (production cleaning) and ``paper``, the GPLR paper's
OnlineRetail cut (products keyed by stripped title, postage and zero-price lines kept, eight
countries dropped), which reproduces its 4,297 customers / 3,846 products / 263,267 pairs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional
from urllib.parse import unquote

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType
from pyspark.sql.window import Window

from persona_lib import contracts, storage
from persona_lib.config import AppConfig, IngestConfig
from persona_lib.errors import ConfigError, InputError
from persona_lib.ingest_files import customer_id_digits, header_problem, open_content, out_of_range_rules, split_records
from persona_lib.spark import session_conf
from persona_lib.tombstones import UNREADABLE_ID_REASONS, customer_hash_column, raw_id_tokens, tombstone_key

# Every rejection reason, in the order they are tested: a record gets the first that applies.
REASONS = (
    "malformed_line",
    "unparsable_value",
    "out_of_range_value",
    "missing_customer",
    "cancellation",
    "excluded_country",  # paper cut only
    "non_positive_quantity",
    "non_positive_price",
    "non_product_code",
    "duplicate_line",
)

# Manifest statuses (ingest_log.status).
INGESTED = "ingested"
REPLACED = "replaced"
CONFLICTING = "conflicting_redelivery"
FAILED = "failed"

# The landing columns as they are named while still raw strings (Spark's names are case-blind,
# so "Quantity" would clash with the typed "quantity").
RAW_COLUMNS = {
    "InvoiceNo": "raw_invoice_no", "StockCode": "raw_stock_code", "Description": "raw_description",
    "Quantity": "raw_quantity", "InvoiceDate": "raw_invoice_date", "UnitPrice": "raw_unit_price",
    "CustomerID": "raw_customer_id", "Country": "raw_country",
}

# What the reader emits: one "file" row per landing file (its identity and whether it could
# be read) and one "data" row per CSV record after the header of each file it parsed.
RECORDS_SCHEMA = StructType([
    StructField("source_file", StringType(), False),
    StructField("content_sha256", StringType(), False),
    StructField("kind", StringType(), False),  # file | data
    StructField("file_status", StringType(), True),  # file rows: read | failed | known
    StructField("file_detail", StringType(), True),
    StructField("line_number", LongType(), False),
    StructField("raw_line", StringType(), True),
    StructField("fields", ArrayType(StringType(), True), True),
    StructField("parse_error", StringType(), True),
])

# The event columns that say what was bought: two kept records equal in all of them are one
# purchase recorded twice (duplicate_line).
EVENT_CONTENT_COLUMNS = ("invoice_no", "product_id", "product_title", "quantity", "unit_price",
                         "event_ts", "customer_id", "country")


class IngestInvariantError(RuntimeError):
    """An invariant failed before commit: a bug, so nothing is written (exit code 1)."""


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


def read_landing_records(spark: SparkSession, landing: str, file_glob: str,
                         known_contents: Iterable[str] = ()) -> DataFrame:
    """A file row per landing file and a data row per CSV record of the files read.

    Files whose content is in ``known_contents`` are hashed but not parsed (``known``)."""
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
    known = frozenset(known_contents)

    def parse(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows: list[tuple] = []
            for path, content in zip(batch["path"], batch["content"]):
                rows.extend(file_rows(unquote(PurePosixPath(str(path)).name), bytes(content), known))
            yield pd.DataFrame(rows, columns=RECORDS_SCHEMA.fieldNames())

    return files.mapInPandas(parse, RECORDS_SCHEMA)


def file_rows(name: str, content: bytes, known_contents: frozenset = frozenset()) -> list[tuple]:
    """The reader's rows (RECORDS_SCHEMA) for one landing file."""
    opened = open_content(name, content)
    sha = opened.content_sha256
    if opened.problem:
        return [(name, sha, "file", "failed", opened.problem, 0, None, None, None)]
    if sha in known_contents:
        return [(name, sha, "file", "known", None, 0, None, None, None)]
    records = split_records(opened.text)
    header = next(records, None)
    problem = header_problem(header, contracts.RAW_FIELDS)
    if problem:
        return [(name, sha, "file", "failed", problem, 0, None, None, None)]
    rows = [(name, sha, "file", "read", None, 0, None, None, None)]
    rows.extend((name, sha, "data", None, None, r.line_number, r.raw, r.fields, r.error) for r in records)
    return rows


def list_local_files(landing: str, file_glob: str, key: str = "ingest.landing") -> Optional[list[str]]:
    """Names of the landing files on local disk (None for remote storage, which Spark lists).

    ``key``: where the folder was set, for the error."""
    if "://" in landing or landing.startswith("dbfs:"):
        return None
    folder = Path(landing)
    if not folder.exists():
        raise InputError(f"landing folder not found: {landing} (set by {key})")
    if not folder.is_dir():
        raise InputError(f"landing path is not a folder: {landing} (set by {key})")
    return sorted(p.name for p in folder.glob(file_glob) if p.is_file())


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class FileSeen:
    name: str
    content_sha256: str
    read_status: str  # read | failed | known
    detail: Optional[str] = None


@dataclass(frozen=True)
class FileAction:
    name: str
    content_sha256: str
    action: str  # ingest | skip | conflict | fail
    detail: Optional[str] = None
    replaces: Optional[str] = None  # the content this name held before (on_changed_file: replace)


def plan_files(seen: Iterable[FileSeen], current: dict[str, str], on_changed_file: str) -> list[FileAction]:
    """What to do with each file, given ``current`` (name -> its ingested content).

    Content already ingested under any name, or earlier in this delivery, is skipped; a
    changed file under an ingested name is a conflict or replaces it; unreadable files fail."""
    ingested_by_content = {sha: name for name, sha in current.items()}
    claimed: dict[str, str] = {}
    plan = []
    for file in sorted(seen, key=lambda f: f.name):
        sha = file.content_sha256
        if file.read_status == "failed":
            plan.append(FileAction(file.name, sha, "fail", file.detail))
        elif sha in ingested_by_content:
            plan.append(FileAction(file.name, sha, "skip", f"same content as {ingested_by_content[sha]}, already ingested"))
        elif sha in claimed:
            plan.append(FileAction(file.name, sha, "skip", f"same content as {claimed[sha]} in this delivery"))
        elif file.name in current and on_changed_file != "replace":
            plan.append(FileAction(
                file.name, sha, "conflict",
                f"content differs from the ingested {current[file.name][:12]}; ingest.on_changed_file is "
                f"'reject' (set 'replace' to replace the earlier rows, or deliver it under a new name)"))
        else:
            claimed[sha] = file.name
            plan.append(FileAction(file.name, sha, "ingest", replaces=current.get(file.name)))
    return plan


# --------------------------------------------------------------------------- classifying


def classify_lines(records: DataFrame, rules: CutRules, settings: IngestConfig,
                   earlier_events: Optional[DataFrame] = None) -> DataFrame:
    """Type every data record and give it one ``reason`` (null = kept).

    ``earlier_events``: events committed before, against which a kept record is a
    duplicate_line too."""
    data = records.where(F.col("kind") == "data")
    n_fields = F.coalesce(F.size("fields"), F.lit(-1))
    well_formed = F.col("parse_error").isNull() & (n_fields == len(contracts.RAW_FIELDS))
    raw = data.select(
        "source_file", "content_sha256", "line_number", "raw_line", "parse_error", n_fields.alias("_n_fields"),
        well_formed.alias("well_formed"),
        *[F.when(well_formed, F.col("fields")[i]).alias(RAW_COLUMNS[name])
          for i, name in enumerate(contracts.RAW_FIELDS)],
    )
    blank = lambda c: F.coalesce(F.trim(F.col(c)), F.lit("")) == ""  # noqa: E731
    typed = raw.select(
        "*",
        # Whole units in the landing files (as always), held as DOUBLE like every quantity.
        F.expr("try_cast(trim(raw_quantity) AS INT)").cast("double").alias("quantity"),
        F.expr("try_cast(trim(raw_unit_price) AS DOUBLE)").alias("unit_price"),
        F.expr(f"try_to_timestamp(trim(raw_invoice_date), '{settings.timestamp_format}')").alias("event_ts"),
        # Ids stay text: digits with an optional ".0", which is dropped ("17850.0" -> "17850").
        customer_id_digits(F.col("raw_customer_id")).alias("_customer_digits"),
        F.upper(F.trim(F.col("raw_stock_code"))).alias("stock_code"),
        F.regexp_replace(F.col("raw_description"), r"^\s+|\s+$", "").alias("title"),
    )
    customer_unparsable = ~blank("raw_customer_id") & (F.col("_customer_digits") == "")
    price_not_finite = F.isnan("unit_price") | (F.abs("unit_price") == float("inf"))
    title_missing = F.coalesce(F.col("title"), F.lit("")) == ""
    product_unkeyable = title_missing if rules.product_key == "title" else blank("raw_stock_code")
    unparsable = (
        F.col("quantity").isNull() | F.col("unit_price").isNull() | price_not_finite | F.col("event_ts").isNull()
        | blank("raw_invoice_no") | product_unkeyable | customer_unparsable
    )
    unparsable_detail = F.concat_ws(
        ", ",  # skips the nulls; no array_compact, whose lambda would turn off code generation
        F.when(F.col("quantity").isNull(), F.lit("Quantity")),
        F.when(F.col("unit_price").isNull(), F.lit("UnitPrice")),
        F.when(price_not_finite, F.lit("UnitPrice (not a finite number)")),
        F.when(F.col("event_ts").isNull(), F.lit("InvoiceDate")),
        F.when(blank("raw_invoice_no"), F.lit("InvoiceNo")),
        F.when(product_unkeyable, F.lit("Description" if rules.product_key == "title" else "StockCode")),
        F.when(customer_unparsable, F.lit("CustomerID (digits with an optional .0)")),
    )
    out_of_range, out_of_range_detail = out_of_range_rules(
        settings, F.col("event_ts"), F.col("quantity"), F.col("unit_price"),
        [("date", "InvoiceDate", F.trim("raw_invoice_date")), ("price", "UnitPrice", F.trim("raw_unit_price")),
         ("quantity", "Quantity", F.trim("raw_quantity"))])
    reason = (
        F.when(~F.col("well_formed"), F.lit("malformed_line"))
        .when(unparsable, F.lit("unparsable_value"))
        .when(out_of_range, F.lit("out_of_range_value"))
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
        reason = reason.when(F.col("stock_code").isin(*settings.non_product_codes), F.lit("non_product_code"))
    detail = (
        F.when(F.col("parse_error").isNotNull(), F.col("parse_error"))
        .when(~F.col("well_formed"), F.concat(F.lit(f"expected {len(contracts.RAW_FIELDS)} fields, found "),
                                              F.col("_n_fields").cast("string")))
        .when(unparsable, F.concat(F.lit("unparsable: "), unparsable_detail))
        .when(out_of_range, out_of_range_detail)
    )
    ok_customer = F.col("well_formed") & (F.col("_customer_digits") != "")
    product_id = F.col("title") if rules.product_key == "title" else F.col("stock_code")
    classified = typed.select(
        "*", reason.alias("reason"), detail.alias("detail"),
        F.when(ok_customer, F.col("_customer_digits")).alias("customer_id"),
        product_id.alias("product_id"),
    ).drop("_customer_digits", "_n_fields")
    event_columns = classified.select("*", *_event_content())
    return mark_duplicates(event_columns.withColumn("_event_key", event_key(event_columns)), earlier_events)


def _event_content() -> list:
    """The event columns of a classified record, named as in purchase_events."""
    return [F.col("title").alias("product_title"), F.trim(F.col("raw_invoice_no")).alias("invoice_no"),
            F.trim(F.col("raw_country")).alias("country")]


def event_key(events: DataFrame):
    """What a purchase is, as one value: equal keys are the same purchase recorded twice."""
    return F.sha2(F.to_json(F.struct(*[F.col(c) for c in EVENT_CONTENT_COLUMNS])), 256)


def mark_duplicates(classified: DataFrame, earlier_events: Optional[DataFrame]) -> DataFrame:
    """A record that would be kept is a duplicate_line when it is identical in every raw field
    to an earlier kept one of this delivery (by file name, then line), or when it is the same
    purchase (``event_key``) as an event committed by an earlier run."""
    candidate = F.col("reason").isNull()
    # Raw fields within a delivery: the paper cut keys products by title, and two stock codes
    # sharing a title in one invoice line-up are two purchases, not one.
    order = Window.partitionBy(candidate, *RAW_COLUMNS.values()).orderBy("source_file", "line_number")
    first = F.first(F.concat_ws(":", "source_file", F.col("line_number").cast("string"))).over(order)
    marked = classified.select("*", F.row_number().over(order).alias("_seen"), first.alias("_first"))
    if earlier_events is not None:
        earlier = (earlier_events.select(event_key(earlier_events).alias("_event_key"),
                                         F.concat_ws(":", "source_file", F.col("line_number").cast("string"))
                                         .alias("_earlier_at"))
                   .groupBy("_event_key").agg(F.min("_earlier_at").alias("_earlier")))
        marked = marked.join(earlier, "_event_key", "left")
    else:
        marked = marked.withColumn("_earlier", F.lit(None).cast("string"))
    duplicate = candidate & (F.col("_earlier").isNotNull() | (F.col("_seen") > 1))
    return marked.select(
        *[c for c in classified.columns if c not in ("reason", "detail", "_event_key")],
        F.when(duplicate, F.lit("duplicate_line")).otherwise(F.col("reason")).alias("reason"),
        F.when(duplicate, F.concat(F.lit("the same purchase as "), F.coalesce("_earlier", "_first")))
        .otherwise(F.col("detail")).alias("detail"),
    )


def drop_forgotten(classified: DataFrame, tombstones: Optional[DataFrame], key: Optional[bytes] = None) -> DataFrame:
    """Mark lines of forgotten customers: they go to no table, not even quarantine.

    A line is forgotten when the keyed hash of its customer id is a tombstone, or, for a line
    whose CustomerID could not be read (malformed, unparsable), when any number of its raw
    text is. ``key`` is ``persona_lib.tombstones.tombstone_key(config.forget)``.
    """
    if tombstones is None:
        return classified.withColumn("forgotten", F.lit(False))

    if key is None:
        raise ValueError("drop_forgotten needs the tombstone key (persona_lib.tombstones.tombstone_key)")
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
        record_id().alias("event_id"),
        "customer_id",
        "product_id",
        "product_title",
        "invoice_no",
        "quantity",
        "unit_price",
        "event_ts",
        "country",
        "source_file",
        "line_number",
        "content_sha256",
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
    )


def record_id():
    """A record's key: the content of its file and its line there, never the file's name."""
    return F.sha2(F.concat_ws(":", "content_sha256", F.col("line_number").cast("string")), 256)


# quarantine column -> the column of the classified lines of the landing files that holds it
# raw (a mapped source names its own: ingest_sources.QUARANTINE_RAW_COLUMNS).
LANDING_QUARANTINE_COLUMNS = {
    "invoice_no": "raw_invoice_no", "stock_code": "raw_stock_code", "description": "raw_description",
    "quantity": "raw_quantity", "invoice_date": "raw_invoice_date", "unit_price": "raw_unit_price",
    "customer_id": "raw_customer_id", "country": "raw_country",
}


def to_quarantine(classified: DataFrame, ingested_at,
                  raw_columns: dict[str, str] = LANDING_QUARANTINE_COLUMNS) -> DataFrame:
    """The quarantine rows of classified lines: every rejected, not forgotten, line with its
    raw fields as they were read (``raw_columns``)."""
    rejected = classified.where(F.col("reason").isNotNull() & ~F.col("forgotten"))
    return rejected.select(
        "source_file", "line_number", "content_sha256", "reason", "detail", "raw_line",
        *[F.col(raw).alias(column) for column, raw in raw_columns.items()],
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
    )


def event_table_sizes(events: DataFrame) -> dict:
    """customers, products, distinct customer-product pairs and events of a purchase_events table.

    The pairs are grouped under a partitioning by customer, so one shuffle of the events gives
    the pairs and, without another, the customers. Three ``countDistinct`` in one aggregation
    expand every event into three rows before shuffling them. The products' distinct count
    is a separate aggregation that combines per partition before its shuffle.
    """
    per_customer = (
        events.select("customer_id", "product_id").repartition("customer_id")
        .groupBy("customer_id", "product_id").agg(F.count(F.lit(1)).alias("_events"))
        .groupBy("customer_id").agg(F.count("product_id").alias("_pairs"), F.sum("_events").alias("_events"))
    )
    totals = per_customer.agg(
        F.count("customer_id").alias("customers"),
        F.coalesce(F.sum(F.when(F.col("customer_id").isNotNull(), F.col("_pairs"))), F.lit(0)).alias("pairs"),
        F.coalesce(F.sum("_events"), F.lit(0)).alias("events"),
    ).first()
    products = events.agg(F.countDistinct("product_id").alias("products")).first()
    return {"customers": totals["customers"], "products": products["products"], "pairs": totals["pairs"],
            "events": totals["events"]}


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
    return stats.join(titles, "product_id").withColumn("product_group", F.lit(None).cast("string"))


# --------------------------------------------------------------------------- the job


@dataclass
class _Manifest:
    """The manifest as this run found it: every (name, content) row and its status."""

    rows: dict[tuple[str, str], dict] = field(default_factory=dict)

    @property
    def current(self) -> dict[str, str]:
        """name -> the content ingested under it."""
        return {name: sha for (name, sha), row in self.rows.items() if row["status"] == INGESTED}


def _read_manifest(spark: SparkSession, ref: storage.TableRef) -> _Manifest:
    if not ref.exists(spark):
        return _Manifest()
    # One row per file delivery: this grows with files, never with customers.
    rows = ref.read(spark).collect()
    return _Manifest({(r["source_file"], r["content_sha256"]): r.asDict() for r in rows})


def _distinct_contents(spark: SparkSession, ref: storage.TableRef) -> set[str]:
    if not ref.exists(spark):
        return set()
    return {r[0] for r in ref.read(spark).select("content_sha256").distinct().collect() if r[0] is not None}


def ingest(spark: SparkSession, config: AppConfig, cut: str = "default",
           landing: Optional[str] = None) -> dict:
    """Run one ingestion of ``ingest.source``; returns the summary the CLI prints (counts of
    this run, table sizes after).

    ``landing`` (a folder) or the paper cut read landing files whatever the source says.
    Landing files that cannot be read or that conflict are listed in ``files_failed``; the
    others are ingested and committed regardless (the CLI then exits 3)."""
    source = config.ingest.source
    tables = storage.resolve_tables(config)
    if landing is None and cut == "default" and source.format != "uci_landing":
        if not source.format:
            raise ConfigError("ingest.source.format is not set: name the purchase source (delta, parquet, "
                              "csv, table or query with its columns mapping, or uci_landing for the bundled "
                              "landing files; README \"Run on your data\")")
        return ingest_source(spark, config, tables)
    return ingest_landing(spark, config, tables, cut, landing)


def landing_folder(config: AppConfig) -> str:
    """The landing folder format uci_landing reads: ingest.source.path, else ingest.landing."""
    return str(config.resolve_path(config.ingest.source.path or config.ingest.landing))


def ingest_landing(spark: SparkSession, config: AppConfig, tables: storage.Tables, cut: str = "default",
                   landing: Optional[str] = None) -> dict:
    """Ingest the landing CSV files of ``landing`` (default: ``landing_folder``)."""
    rules = cut_rules(config, cut)
    settings = config.ingest
    landing_path = landing or landing_folder(config)
    ingested_at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s").to_pydatetime()
    ingest_id = uuid.uuid4().hex
    events_ref = tables.get(rules.events_table)
    quarantine_ref = tables.get(rules.quarantine_table)
    products_ref = tables.get(rules.products_table)
    log_ref = tables.get(rules.log_table)

    key = "--landing" if landing else "ingest.source.path" if settings.source.path else "ingest.landing"
    listed = list_local_files(landing_path, settings.file_glob, key)
    manifest = _read_manifest(spark, log_ref)
    current = manifest.current
    records = read_landing_records(spark, landing_path, settings.file_glob, set(current.values()))
    records = records.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        seen = [FileSeen(r["source_file"], r["content_sha256"], r["file_status"], r["file_detail"])
                for r in records.where(F.col("kind") == "file")
                .select("source_file", "content_sha256", "file_status", "file_detail").collect()]
        # Spark's binaryFile skips zero-byte files: a name listed on disk but never read is one.
        empty_sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        seen += [FileSeen(name, empty_sha, "failed", "the file is empty (expected a header line)")
                 for name in sorted(set(listed or ()) - {f.name for f in seen})]
        if not seen:
            raise InputError(f"empty input: no landing file matched {settings.file_glob!r} in {landing_path} "
                             "(check ingest.landing and ingest.file_glob)")
        plan = plan_files(seen, current, settings.on_changed_file)
        to_ingest = [a for a in plan if a.action == "ingest"]
        stale = {a.replaces for a in to_ingest if a.replaces}
        committed = (set(current.values()) - stale) | {a.content_sha256 for a in to_ingest}
        # Rows whose content no manifest row will account for: a run that died before its
        # manifest commit, or a replaced content. They go in the same commits.
        orphans = (_distinct_contents(spark, events_ref) | _distinct_contents(spark, quarantine_ref)) - committed
        rewrite = {a.content_sha256 for a in to_ingest} | stale | orphans

        per_file: dict[tuple[str, str], dict] = {}
        reasons: dict[str, int] = {}
        if rewrite:
            per_file, reasons = _write_contents(spark, config, rules, records, to_ingest, rewrite, committed,
                                                events_ref, quarantine_ref, tables.tombstones, ingested_at)
    finally:
        records.unpersist()

    events_df = _refresh_products(spark, config, events_ref, products_ref)
    _write_manifest(spark, log_ref, manifest, plan, per_file, ingest_id, ingested_at)

    sizes = event_table_sizes(events_df) if events_df is not None else \
        {"customers": 0, "products": 0, "pairs": 0, "events": 0}
    totals = {k: sum(c[k] for c in per_file.values())
              for k in ("rows_in", "rows_kept", "rows_quarantined", "rows_forgotten")}
    failed = [{"file": a.name, "status": FAILED if a.action == "fail" else CONFLICTING, "detail": a.detail}
              for a in plan if a.action in ("fail", "conflict")]
    return {
        "cut": rules.name,
        "landing": landing_path,
        "files": len(plan),
        "files_ingested": len(to_ingest),
        "files_replaced": sum(1 for a in to_ingest if a.replaces),
        "files_skipped": sum(1 for a in plan if a.action == "skip"),
        "files_failed": failed,
        "orphan_contents_removed": len(orphans),
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
        "tables": {ref.name: ref.summary(spark) for ref in (events_ref, products_ref, quarantine_ref, log_ref)
                   if ref.exists(spark)},
    }


def _refresh_products(spark, config, events_ref, products_ref) -> Optional[DataFrame]:
    """Merge the products of every event (catalogue titles first, when ``ingest.products`` is
    set) into products; returns the events read, or None when there are none."""
    from persona_lib.ingest_sources import read_catalogue

    events_df = events_ref.read(spark) if events_ref.exists(spark) else None
    if events_df is None:
        return None
    # A no-op when nothing changed (only changed rows go into the MERGE); after a run that
    # died between the events and the products commits, it brings products up to date.
    products = products_from_events(events_df)
    catalogue = read_catalogue(spark, config)
    if catalogue is not None:
        products = (products.drop("product_group")
                    .join(catalogue.withColumnRenamed("title", "_catalogue_title"), "product_id", "left")
                    .withColumn("title", F.coalesce("_catalogue_title", "title")).drop("_catalogue_title"))
    storage.merge_upsert(spark, products, products_ref, contracts.PRODUCTS, ["product_id"])
    return events_df


def ingest_source(spark: SparkSession, config: AppConfig, tables: storage.Tables) -> dict:
    """Ingest the mapped source ``ingest.source`` (persona_lib.ingest_sources): one
    ingest_log row for the source, rows in = kept + quarantined + forgotten, and a MERGE
    that makes a re-run on the same data change nothing."""
    from persona_lib import ingest_sources

    rules = cut_rules(config, "default")
    source = config.ingest.source
    name = ingest_sources.source_name(config, source)
    fingerprint = ingest_sources.source_fingerprint(name)
    ingested_at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s").to_pydatetime()
    events_ref = tables.get(rules.events_table)
    quarantine_ref = tables.get(rules.quarantine_table)
    products_ref = tables.get(rules.products_table)
    log_ref = tables.get(rules.log_table)

    read = _incremental_read(spark, config, events_ref, log_ref, name, fingerprint)
    raw = read.rows
    catalogue = ingest_sources.read_catalogue(spark, config)
    tombstones_ref = tables.tombstones
    tombstones = tombstones_ref.read(spark) if tombstones_ref.exists(spark) else None
    classified_rows = ingest_sources.raw_text_of_quarantined_only(drop_forgotten(
        ingest_sources.coerce_source(raw, source, config.ingest, name, fingerprint),
        tombstones, tombstone_key(config.forget) if tombstones is not None else None,
    ))
    # The four readers below share one cached copy. Its two constant columns are added back
    # after the cache rather than stored per row, and it is not compressed: compressing it
    # saved no memory and cost as much as the typing itself (1M rows: 10 s against 6.5 s).
    # The setting must hold both when the cache is declared and when its first action builds it.
    constants = {"source_file": F.lit(name), "content_sha256": F.lit(fingerprint)}
    cached = classified_rows.drop(*constants)
    try:
        with session_conf(spark, {"spark.sql.inMemoryColumnarStorage.compressed": "false"}):
            cached.persist(StorageLevel.MEMORY_AND_DISK)
            outcomes = cached.groupBy(F.when(F.col("forgotten"), F.lit("(forgotten)"))
                                      .otherwise(F.coalesce("reason", F.lit("(kept)"))).alias("outcome")) \
                .count().collect()  # one row per reason
        classified = cached.select(*[constants[c].alias(c) if c in constants else c for c in classified_rows.columns])
        rows_in = raw.count()
        counts = {r["outcome"]: int(r["count"]) for r in outcomes}
        kept = counts.pop("(kept)", 0)
        forgotten = counts.pop("(forgotten)", 0)
        quarantined = sum(counts.values())
        if rows_in != kept + quarantined + forgotten:
            raise IngestInvariantError(f"{name}: rows lost or doubled in ingestion ({rows_in} in, {kept} kept, "
                                       f"{quarantined} quarantined, {forgotten} forgotten), nothing written")
        events = ingest_sources.to_source_events(classified, ingested_at, catalogue)
        quarantine = to_quarantine(classified, ingested_at, ingest_sources.QUARANTINE_RAW_COLUMNS)
        _check_record_outcomes(events, quarantine)
        # line_number too: it must stay distinct from the quarantined duplicates' (personas verify).
        # An incremental run saw only part of the source: absence from it proves nothing.
        delete_absent = source.incremental == "full"
        changed = _merge_source_rows(spark, events, events_ref, contracts.PURCHASE_EVENTS, ["event_id"], fingerprint,
                                     (*ingest_sources.EVENT_CONTENT, "line_number"), delete_absent)
        changed |= _merge_source_rows(spark, quarantine, quarantine_ref, contracts.QUARANTINE,
                                      ["content_sha256", "line_number"], fingerprint, (), delete_absent)
        deleted = _delete_source_events(spark, events_ref, read.removed, fingerprint)
    finally:
        cached.unpersist()
    events_df = _refresh_products(spark, config, events_ref, products_ref)
    _write_source_manifest(spark, log_ref, name, fingerprint, (rows_in, kept, quarantined, forgotten), ingested_at,
                           read.source_version, changed or deleted > 0 or source.incremental == "full")
    sizes = event_table_sizes(events_df) if events_df is not None else \
        {"customers": 0, "products": 0, "pairs": 0, "events": 0}
    return {
        "cut": rules.name,
        "source": name,
        "format": source.format,
        "incremental": source.incremental,
        **read.figures,
        "rows_deleted": deleted,
        "files": 1,
        "files_ingested": 1,
        "files_replaced": 0,
        "files_skipped": 0,
        "files_failed": [],
        **sizes,
        "rows_in": rows_in,
        "rows_kept": kept,
        "quarantined": dict(sorted(counts.items())),
        "forgotten": forgotten,
        "balanced": True,
        "tables": {ref.name: ref.summary(spark) for ref in (events_ref, products_ref, quarantine_ref, log_ref)
                   if ref.exists(spark)},
    }


def _write_source_manifest(spark, log_ref, name: str, fingerprint: str, counts: tuple, ingested_at,
                           source_version: Optional[int], tables_changed: bool) -> None:
    """The source's ingest_log row: written when new, or when this run changed the tables (or
    the change feed position) and its counts or position differ, so the row says which run
    last changed the tables, and a re-run on the same data commits nothing."""
    storage.ensure_table(spark, log_ref, contracts.INGEST_LOG)
    count_columns = ("rows_in", "rows_kept", "rows_quarantined", "rows_forgotten")
    existing = (log_ref.read(spark)  # the source's one row
                .where((F.col("source_file") == name) & (F.col("content_sha256") == fingerprint))
                .first())
    if existing is not None:
        before = existing.asDict()
        same_position = before.get("source_version") == source_version
        if same_position and (not tables_changed or (before["status"], *[before[c] for c in count_columns])
                              == (INGESTED, *counts)):
            return
    log_row = spark.createDataFrame(
        [(uuid.uuid4().hex, name, fingerprint, INGESTED, None, *counts, ingested_at, source_version)],
        contracts.INGEST_LOG)
    _merge_ingest_log(spark, log_ref, log_row)


def _merge_source_rows(spark, rows: DataFrame, ref: storage.TableRef, schema, keys, fingerprint: str,
                       content_columns, delete_absent: bool = True) -> bool:
    """The table's rows of one source become ``rows``: new keys inserted, a key whose content
    changed updated, and (``delete_absent``) this source's keys no longer in it deleted. Only
    the difference goes into the MERGE, and none at all when there is none, so a re-run on the
    same data rewrites no file and commits nothing. Returns whether it committed."""
    storage.ensure_table(spark, ref, schema)
    incoming = storage.conform(rows, schema, ref.name)
    current = ref.read(spark).where(F.col("content_sha256") == F.lit(fingerprint))
    if current.isEmpty():
        # The source's first ingest: every row is new, so they are written as they are rather
        # than anti-joined with nothing, cached and merged (about 220 s of a 13.3M-row first
        # ingest on 2 cores). A concurrent commit touching this source's rows conflicts with
        # this write as it would with the MERGE.
        if incoming.isEmpty():
            return False
        storage.replace_where(incoming, ref, schema, f"content_sha256 = '{fingerprint}'")
        return True
    same = [incoming[c].eqNullSafe(current[c]) for c in (*keys, *content_columns)]
    changed = incoming.join(current, same[0] if len(same) == 1 else _all(same), "left_anti")
    difference = changed.withColumn("_delete", F.lit(False))
    if delete_absent:
        gone = current.join(incoming.select(*keys), list(keys), "left_anti")
        difference = difference.unionByName(gone.select(*schema.fieldNames()).withColumn("_delete", F.lit(True)))
    difference = difference.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if difference.isEmpty():
            return False
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        every_column = {f"`{c}`": f"s.`{c}`" for c in schema.fieldNames()}
        (
            ref.delta(spark).alias("t").merge(difference.alias("s"), condition)
            .whenMatchedDelete(condition="s._delete")
            .whenMatchedUpdate(set=every_column)
            .whenNotMatchedInsert(condition="NOT s._delete", values=every_column)
            .execute()
        )
        return True
    finally:
        difference.unpersist()


def _delete_source_events(spark, events_ref: storage.TableRef, removed: Optional[DataFrame], fingerprint: str) -> int:
    """Delete this source's events that its change feed removed; returns how many went."""
    if removed is None:
        return 0
    doomed = (events_ref.read(spark).where(F.col("content_sha256") == F.lit(fingerprint))
              .join(removed, "event_id", "left_semi").select("event_id")).localCheckpoint()
    count = doomed.count()
    if count:
        (events_ref.delta(spark).alias("t")
         .merge(doomed.alias("s"), f"t.event_id = s.event_id AND t.content_sha256 = '{fingerprint}'")
         .whenMatchedDelete().execute())
    return count


@dataclass(frozen=True)
class SourceRead:
    """What one run reads of a mapped source: the rows to ingest, the event_ids its change
    feed removed (None unless change_feed), the change feed position, and the figures of the
    window for the summary."""

    rows: DataFrame
    removed: Optional[DataFrame]
    source_version: Optional[int]
    figures: dict


def _incremental_read(spark, config: AppConfig, events_ref: storage.TableRef, log_ref: storage.TableRef,
                      name: str, fingerprint: str) -> SourceRead:
    from persona_lib import ingest_sources

    source = config.ingest.source
    if source.incremental == "watermark":
        raw = ingest_sources.read_table(spark, config, source, "ingest.source")
        newest = (events_ref.read(spark).where(F.col("content_sha256") == F.lit(fingerprint))
                  .agg(F.max("event_ts")).first()[0]) if events_ref.exists(spark) else None
        start = ingest_sources.watermark_start(newest, source.watermark_lookback_hours)
        rows = raw if start is None else ingest_sources.rows_from(raw, source, start)
        return SourceRead(rows, None, None, {"read_from": start.isoformat(sep=" ") if start else None})
    if source.incremental == "change_feed":
        version = ingest_sources.source_table_version(spark, config, source)
        last = _last_source_version(spark, log_ref, name, fingerprint)
        if last is None:  # first run: the whole table as of the version the next run reads after
            rows = ingest_sources.read_table(spark, config, source, "ingest.source", version=version)
            return SourceRead(rows, None, version, {"source_version_from": None, "source_version": version})
        if version <= last:
            rows = ingest_sources.read_table(spark, config, source, "ingest.source", version=last).limit(0)
            return SourceRead(rows, None, last, {"source_version_from": last, "source_version": last})
        changes = ingest_sources.read_changes(spark, config, source, last, version)
        rows, removed = ingest_sources.split_changes(changes, source, fingerprint)
        return SourceRead(rows, removed, version, {"source_version_from": last, "source_version": version})
    return SourceRead(ingest_sources.read_table(spark, config, source, "ingest.source"), None, None, {})


def _last_source_version(spark, log_ref: storage.TableRef, name: str, fingerprint: str) -> Optional[int]:
    """The change feed position the source's ingest_log row records (None: never read)."""
    if not log_ref.exists(spark):
        return None
    log = log_ref.read(spark)
    if "source_version" not in log.columns:  # a manifest from before change feeds were read
        return None
    row = log.where((F.col("source_file") == name) & (F.col("content_sha256") == fingerprint)).select(
        "source_version").first()
    return None if row is None or row[0] is None else int(row[0])


def _all(conditions):
    combined = conditions[0]
    for condition in conditions[1:]:
        combined = combined & condition
    return combined


def _write_contents(spark, config, rules, records, to_ingest, rewrite, committed,
                    events_ref, quarantine_ref, tombstones_ref, ingested_at):
    """Classify the files to ingest, check the invariants, then commit events and quarantine.

    Each table gets one MERGE: insert the new rows, and delete the rows of every content in
    ``rewrite`` (what is being ingested, replaced or orphaned) that are not among them."""
    chosen = spark.createDataFrame([(a.name, a.content_sha256) for a in to_ingest],
                                   "source_file string, content_sha256 string")
    data = records.where(F.col("kind") == "data").join(F.broadcast(chosen), ["source_file", "content_sha256"],
                                                       "left_semi")
    earlier_contents = sorted(committed - {a.content_sha256 for a in to_ingest})
    earlier = None
    if earlier_contents and events_ref.exists(spark):
        earlier = events_ref.read(spark).where(F.col("content_sha256").isin(*earlier_contents))
    tombstones = tombstones_ref.read(spark) if tombstones_ref.exists(spark) else None
    classified = drop_forgotten(classify_lines(data, rules, config.ingest, earlier), tombstones,
                                tombstone_key(config.forget) if tombstones is not None else None) \
        .persist(StorageLevel.MEMORY_AND_DISK)
    try:
        per_file = _per_file_counts(data, classified, to_ingest)
        events = to_events(classified, ingested_at)
        quarantine = to_quarantine(classified, ingested_at)
        _check_record_outcomes(events, quarantine)
        _check_manifest_coverage(events, to_ingest)
        reasons = {r["reason"]: r["count"] for r in
                   classified.where(F.col("reason").isNotNull() & ~F.col("forgotten"))
                   .groupBy("reason").count().collect()}
        delete_when = F.col("t.content_sha256").isin(*sorted(rewrite))
        _merge_contents(spark, events, events_ref, contracts.PURCHASE_EVENTS, ["event_id"], delete_when)
        _merge_contents(spark, quarantine, quarantine_ref, contracts.QUARANTINE,
                        ["content_sha256", "line_number"], delete_when)
    finally:
        classified.unpersist()
    return per_file, reasons


def _merge_contents(spark, rows: DataFrame, ref: storage.TableRef, schema, keys, delete_when) -> None:
    storage.ensure_table(spark, ref, schema)
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    (
        ref.delta(spark).alias("t")
        .merge(storage.conform(rows, schema, ref.name).alias("s"), condition)
        .whenNotMatchedInsertAll()
        .whenNotMatchedBySourceDelete(delete_when)
        .execute()
    )


def _write_manifest(spark, ref, manifest: _Manifest, plan: list[FileAction], per_file, ingest_id,
                    ingested_at) -> None:
    """The commit marker, written last: a row per file ingested, replaced, conflicting or
    failed; a row already there with the same status is not written again."""
    rows = []

    def add(name, sha, status, detail, counts=None, keep_from=None):
        counts = counts or {"rows_in": 0, "rows_kept": 0, "rows_quarantined": 0, "rows_forgotten": 0}
        old = manifest.rows.get((name, sha))
        if old is not None and old["status"] == status:
            return
        if keep_from is not None:
            counts = {k: keep_from[k] for k in counts}
        rows.append((ingest_id, name, sha, status, detail, counts["rows_in"], counts["rows_kept"],
                     counts["rows_quarantined"], counts["rows_forgotten"], ingested_at, None))

    for action in plan:
        if action.action == "ingest":
            add(action.name, action.content_sha256, INGESTED, None, per_file[(action.name, action.content_sha256)])
            if action.replaces:
                add(action.name, action.replaces, REPLACED, f"replaced by {action.content_sha256} in ingest {ingest_id}",
                    keep_from=manifest.rows[(action.name, action.replaces)])
        elif action.action == "conflict":
            add(action.name, action.content_sha256, CONFLICTING, action.detail)
        elif action.action == "fail":
            add(action.name, action.content_sha256, FAILED, action.detail)
    if not rows:
        return
    storage.ensure_table(spark, ref, contracts.INGEST_LOG)
    source = spark.createDataFrame(rows, contracts.INGEST_LOG)
    _merge_ingest_log(spark, ref, source)


def _per_file_counts(data: DataFrame, classified: DataFrame, to_ingest: list[FileAction]) -> dict:
    """Per file: records in and their outcomes; raises if any file does not balance."""
    lines_in = {(r["source_file"], r["content_sha256"]): r["count"] for r in
                data.groupBy("source_file", "content_sha256").count().collect()}
    outcomes = classified.groupBy("source_file", "content_sha256").agg(
        F.count(F.lit(1)).alias("outcomes"),
        F.sum(F.when(F.col("reason").isNull() & ~F.col("forgotten"), 1).otherwise(0)).alias("kept"),
        F.sum(F.when(F.col("reason").isNotNull() & ~F.col("forgotten"), 1).otherwise(0)).alias("quarantined"),
        F.sum(F.when(F.col("forgotten"), 1).otherwise(0)).alias("forgotten"),
    ).collect()
    # A header-only file has no records and still gets its manifest row.
    counts = {(a.name, a.content_sha256): {"rows_in": int(lines_in.get((a.name, a.content_sha256), 0)),
                                           "rows_kept": 0, "rows_quarantined": 0, "rows_forgotten": 0,
                                           "outcomes": 0} for a in to_ingest}
    for row in outcomes:
        counts[(row["source_file"], row["content_sha256"])].update(
            rows_kept=int(row["kept"]), rows_quarantined=int(row["quarantined"]),
            rows_forgotten=int(row["forgotten"]), outcomes=int(row["outcomes"]))
    unbalanced = [f"{name} ({c['rows_in']} in, {c['rows_kept']} kept, {c['rows_quarantined']} quarantined, "
                  f"{c['rows_forgotten']} forgotten, {c['outcomes']} outcomes)"
                  for (name, _), c in sorted(counts.items())
                  if not c["rows_in"] == c["outcomes"] == c["rows_kept"] + c["rows_quarantined"] + c["rows_forgotten"]]
    if unbalanced:
        raise IngestInvariantError("records lost or doubled in ingestion (in != kept + quarantined + forgotten), "
                                   f"nothing written: {unbalanced[:5]}")
    for c in counts.values():
        del c["outcomes"]
    return counts


def _check_record_outcomes(events: DataFrame, quarantine: DataFrame) -> None:
    """No record is both kept and quarantined, and none is kept or quarantined twice."""
    keys = (events.select("content_sha256", "line_number", F.lit("kept").alias("outcome"))
            .unionByName(quarantine.select("content_sha256", "line_number", F.lit("quarantined").alias("outcome"))))
    clashes = (keys.groupBy("content_sha256", "line_number").count().where(F.col("count") > 1)
               .select(F.concat_ws(":", "content_sha256", F.col("line_number").cast("string"))).limit(5).collect())
    if clashes:
        raise IngestInvariantError(f"records with more than one outcome, nothing written: {[r[0] for r in clashes]}")


def _check_manifest_coverage(events: DataFrame, to_ingest: list[FileAction]) -> None:
    """Every event written comes from a content that gets its ``ingested`` manifest row in
    this run (rows of any other content not in the manifest are deleted by the same MERGE)."""
    written = {r[0] for r in events.select("content_sha256").distinct().collect()}
    missing = written - {a.content_sha256 for a in to_ingest}
    if missing:
        raise IngestInvariantError(f"events of content(s) without a manifest row, nothing written: {sorted(missing)[:5]}")


def _merge_ingest_log(spark: SparkSession, ref: storage.TableRef, rows: DataFrame) -> None:
    """Upsert ``rows`` (INGEST_LOG) into the ingest log, keyed by file name and content hash."""
    (
        ref.delta(spark).alias("t")
        .merge(rows.alias("s"), "t.source_file = s.source_file AND t.content_sha256 = s.content_sha256")
        .withSchemaEvolution()  # a manifest written before source_version existed gains it
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
