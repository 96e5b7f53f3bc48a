"""A mapped purchase source (``ingest.source``: delta, parquet, csv, table or query) ->
purchase_events and quarantine, Spark-native end to end (no row reaches the driver).

Reading. ``read_source`` loads the source as Spark sees it; a missing path, table or a
query Spark rejects is an ``InputError`` naming the config key and the resolved location.

Coercion. ``coerce_source`` selects the mapped columns, casts each with an explicit type and
gives every row exactly one outcome: kept (``reason`` null) or one quarantine reason whose
``detail`` names the field and its source column. A column mapped to null becomes NULL.

Identity. The source's fingerprint (format and location, not the mapping) is its
``content_sha256`` and its ``ingest_log`` row. ``event_id`` = sha256(fingerprint, the row's
key): the declared ``ingest.source.key`` columns, else every mapped column; so a re-run maps
each row to the same event, and writing is a MERGE that inserts new events, updates an event
whose content changed under the same key, and deletes this source's events that are no longer
in it. Running it twice on the same source changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Optional

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from persona_lib.config import FORMAT_LOCATION, AppConfig, IngestConfig, IngestSourceConfig, ProductCatalogConfig
from persona_lib.errors import ConfigError, InputError
from persona_lib.ingest_files import customer_id_digits, out_of_range_rules

# The purchase fields a mapping may name, in the order they are tested for errors.
MAPPED_FIELDS = ("customer_id", "product_id", "quantity", "event_ts", "unit_price", "basket_id", "title",
                 "country")
# The events' content: two rows under one key that differ here are a correction.
EVENT_CONTENT = ("customer_id", "product_id", "product_title", "invoice_no", "quantity", "unit_price",
                 "event_ts", "country")
_MAX_LONG = (1 << 63) - 1


def _names(mapped) -> tuple[str, ...]:
    if mapped is None:
        return ()
    return (mapped,) if isinstance(mapped, str) else tuple(mapped)


def _local_path(path: str) -> Optional[Path]:
    """The local file or folder a path names, None for remote storage (Spark checks those)."""
    if "://" in path or path.startswith("dbfs:"):
        return None
    return Path(path)


def check_local_paths(config: AppConfig) -> None:
    """Before Spark starts: a mapped source or catalogue path on local disk must exist (an
    ``InputError`` names the key and the resolved path)."""
    for key, spec in (("ingest.source", config.ingest.source), ("ingest.products", config.ingest.products)):
        if FORMAT_LOCATION.get(spec.format) != "path" or not spec.path:
            continue
        resolved = str(config.resolve_path(spec.path))
        local = _local_path(resolved)
        if local is not None and not local.exists():
            raise InputError(f"{key}.path: {resolved} not found (format {spec.format})")


def read_table(spark: SparkSession, config: AppConfig, spec, key: str, version: Optional[int] = None) -> DataFrame:
    """Read ``spec`` (an ``IngestSourceConfig`` or ``ProductCatalogConfig``) found at config
    key ``key`` (``ingest.source`` / ``ingest.products``); ``version``: a Delta source as of
    that version."""
    fmt = spec.format
    location_key = FORMAT_LOCATION.get(fmt)
    if location_key is None:
        raise ConfigError(f"{key}.format: {fmt!r} is not a readable format")
    if location_key == "path":
        resolved = str(config.resolve_path(spec.path))
        local = _local_path(resolved)
        if local is not None and not local.exists():
            raise InputError(f"{key}.path: {resolved} not found (format {fmt})")
        reader = spark.read.format(fmt)
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if fmt == "csv":
            # Every CSV field stays text: the coercion below types it and quarantines what fails.
            reader = reader.options(**{"header": "true", "inferSchema": "false", **spec.options})
        else:
            reader = reader.options(**spec.options)
        try:
            return reader.load(resolved)
        except Exception as exc:  # AnalysisException names the path; keep its first line
            raise InputError(f"{key}.path: cannot read {resolved} as {fmt}: {_first_line(exc)}") from exc
    if location_key == "table":
        if not spark.catalog.tableExists(spec.table):
            raise InputError(f"{key}.table: table {spec.table} not found")
        reader = spark.read if version is None else spark.read.option("versionAsOf", version)
        return reader.table(spec.table)
    try:
        return spark.sql(spec.query)
    except Exception as exc:
        raise InputError(f"{key}.query: Spark rejected the query: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def source_name(config: AppConfig, source: IngestSourceConfig) -> str:
    """How the source is named in source_file and ingest_log: its format and location."""
    location = getattr(source, FORMAT_LOCATION[source.format])
    if FORMAT_LOCATION[source.format] == "path":
        location = str(config.resolve_path(location))
    return f"{source.format}:{location}"


def source_fingerprint(name: str) -> str:
    """The source's identity (its content_sha256): where it is, not what it holds, so a
    re-run on changed data updates this source's rows instead of adding a second copy."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def check_mapping(df: DataFrame, mapping: dict[str, tuple[str, ...]], key: str) -> None:
    """Every mapped column exists in the source (an error names the key and the column)."""
    present = set(df.columns)
    for field_name, columns in mapping.items():
        for column in columns:
            if column not in present:
                raise InputError(f"{key}.{field_name}: column {column!r} is not in the source "
                                 f"(its columns: {', '.join(df.columns)})")


def _id_text(column: Column, dtype: T.DataType) -> Column:
    """An id column as text: integers as digits, integral floats without ".0", text trimmed."""
    if isinstance(dtype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        return column.cast("string")
    if isinstance(dtype, (T.FloatType, T.DoubleType, T.DecimalType)):
        # NaN equals its own floor in Spark: it is no id (null, so unparsable), not "0".
        not_a_number = F.isnan(column) if not isinstance(dtype, T.DecimalType) else F.lit(False)
        return F.when(not_a_number, F.lit(None).cast("string")) \
            .when(column == F.floor(column), F.floor(column).cast("decimal(38,0)").cast("string")) \
            .otherwise(column.cast("string"))
    return F.trim(column.cast("string"))


def _timestamp(column: Column, dtype: T.DataType, pattern: Optional[str], key: str) -> Column:
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
        return column.cast("timestamp")
    if isinstance(dtype, T.DateType):
        return column.cast("timestamp")
    if isinstance(dtype, T.StringType):
        text = F.trim(column)
        return F.try_to_timestamp(text, F.lit(pattern)) if pattern else F.try_to_timestamp(text)
    raise InputError(f"{key}.columns.event_ts: a {dtype.simpleString()} column cannot be a timestamp "
                     "(expected timestamp, date or text)")


def _mapped_columns(source: IngestSourceConfig) -> list[str]:
    """The source columns a row is read from: every mapped column and the declared key."""
    mapped = {c for f in MAPPED_FIELDS for c in _names(getattr(source.columns, f))}
    return sorted(mapped | set(source.key))


def event_id(source: IngestSourceConfig, fingerprint: str) -> Column:
    """A source row's event_id: sha256 of the fingerprint and its key (ingest.source.key, else
    every mapped column), over the source's own columns."""
    key_columns = tuple(source.key) or tuple(_mapped_columns(source))
    key_json = F.to_json(F.struct(*[F.col(f"`{c}`").cast("string").alias(c) for c in key_columns]))
    return F.sha2(F.concat(F.lit(fingerprint + ":"), key_json), 256)


def watermark_start(newest_event: Optional[dt.datetime], lookback_hours: float) -> Optional[dt.datetime]:
    """Where a watermark run starts reading: the newest event this source already has, less
    the lookback that lets late rows arrive; None (read everything) on a first run."""
    return None if newest_event is None else newest_event - dt.timedelta(hours=lookback_hours)


def rows_from(raw: DataFrame, source: IngestSourceConfig, start: dt.datetime, key: str = "ingest.source") -> DataFrame:
    """The source rows whose event_ts, typed as ``coerce_source`` types it, is at or after
    ``start``, and those whose event_ts cannot be read: those are quarantined on every run
    rather than skipped for ever. The filter is on the source's own column, so a parquet or
    Delta source prunes files and row groups by it."""
    ts_column = _names(source.columns.event_ts)[0]
    dtype = raw.schema[ts_column].dataType
    ts = _timestamp(F.col(f"`{ts_column}`"), dtype, source.timestamp_format, key)
    return raw.where(ts.isNull() | (ts >= F.lit(start).cast("timestamp")))


# Columns the Delta change data feed adds to every row.
CHANGE_FEED_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
_PRESENT_CHANGES = ("insert", "update_postimage")
_REMOVED_CHANGES = ("delete", "update_preimage")


def source_table_version(spark: SparkSession, config: AppConfig, source: IngestSourceConfig) -> int:
    """The latest Delta version of a delta or table source."""
    from delta.tables import DeltaTable

    try:
        table = (DeltaTable.forName(spark, source.table) if source.format == "table"
                 else DeltaTable.forPath(spark, str(config.resolve_path(source.path))))
        return int(table.history(1).select("version").head()[0])
    except Exception as exc:
        location = source.table if source.format == "table" else config.resolve_path(source.path)
        raise InputError(f"ingest.source: incremental change_feed needs a Delta table, and {location} "
                         f"is not one: {_first_line(exc)}") from exc


def read_changes(spark: SparkSession, config: AppConfig, source: IngestSourceConfig, after_version: int,
                 up_to_version: int) -> DataFrame:
    """The source's change data feed from ``after_version`` (exclusive) to ``up_to_version``."""
    reader = (spark.read.format("delta").option("readChangeFeed", "true")
              .option("startingVersion", after_version + 1).option("endingVersion", up_to_version))
    location = source.table if source.format == "table" else str(config.resolve_path(source.path))
    try:
        changes = reader.table(location) if source.format == "table" else reader.load(location)
        # A feed not recorded for the range fails only when a plan reads it: read one row now,
        # so the error names the setting instead of surfacing inside the ingestion.
        changes.isEmpty()
        return changes
    except Exception as exc:
        raise InputError(
            f"ingest.source: cannot read the change data feed of {location} after version {after_version}: "
            f"{_first_line(exc)}. Enable it on the source (ALTER TABLE ... SET TBLPROPERTIES "
            "(delta.enableChangeDataFeed = true)) and ingest once with incremental: full, or use "
            "incremental: watermark") from exc


def split_changes(changes: DataFrame, source: IngestSourceConfig, fingerprint: str) -> tuple[DataFrame, DataFrame]:
    """The net effect of a change feed on the source's rows: (the rows present after it, with
    the source's columns only; the event_id of every row it removed). Each key's last change
    wins; within one commit a row's new image wins over its old one (an update of a declared
    key is a pre- and a post-image under the same event_id). Rows tied at a key's last change
    all stay, so a line inserted twice in one commit is still quarantined as duplicate_line."""
    keyed = changes.withColumn("_event_id", event_id(source, fingerprint))
    present = F.col("_change_type").isin(*_PRESENT_CHANGES)
    last = Window.partitionBy("_event_id").orderBy(F.desc("_commit_version"), F.desc(present.cast("int")))
    latest = (keyed.where(F.col("_change_type").isin(*_PRESENT_CHANGES, *_REMOVED_CHANGES))
              .withColumn("_change_rank", F.rank().over(last)).where(F.col("_change_rank") == 1))
    source_columns = [f"`{c}`" for c in changes.columns if c not in CHANGE_FEED_COLUMNS]
    return (latest.where(present).select(*source_columns),
            latest.where(~present).select(F.col("_event_id").alias("event_id")).distinct())


def coerce_source(df: DataFrame, source: IngestSourceConfig, settings: IngestConfig, name: str,
                  fingerprint: str, key: str = "ingest.source") -> DataFrame:
    """Type every source row and give it one ``reason`` (null = kept) and its ``event_id``.

    Returns the event columns (named as in purchase_events), the quarantine's raw text
    columns (``raw_*``, ``raw_line``: the source row as JSON), ``source_file``,
    ``content_sha256``, ``line_number``, ``event_id``, ``reason`` and ``detail``."""
    mapping = {f: _names(getattr(source.columns, f)) for f in MAPPED_FIELDS}
    mapping = {f: cols for f, cols in mapping.items() if cols}
    check_mapping(df, mapping, f"{key}.columns")
    if source.key:
        check_mapping(df, {"key": tuple(source.key)}, key)
    dtypes = {f.name: f.dataType for f in df.schema.fields}
    mapped_columns = _mapped_columns(source)

    def single(field_name: str) -> tuple[Optional[str], Optional[T.DataType]]:
        cols = mapping.get(field_name, ())
        return (cols[0], dtypes[cols[0]]) if cols else (None, None)

    def raw_text(field_name: str) -> Column:
        cols = mapping.get(field_name, ())
        if not cols:
            return F.lit(None).cast("string")
        return F.concat_ws(" ", *[F.col(f"`{c}`").cast("string") for c in cols]) if len(cols) > 1 \
            else F.col(f"`{cols[0]}`").cast("string")

    customer_col, customer_type = single("customer_id")
    product_col, product_type = single("product_id")
    quantity_col, quantity_type = single("quantity")
    ts_col, ts_type = single("event_ts")
    price_col, price_type = single("unit_price")
    basket_col, basket_type = single("basket_id")
    country_col, _ = single("country")

    customer_text = _id_text(F.col(f"`{customer_col}`"), customer_type)
    title = (F.concat_ws(" ", *[F.trim(F.col(f"`{c}`").cast("string")) for c in mapping["title"]])
             if "title" in mapping else F.lit(None).cast("string"))
    row_json = F.to_json(F.struct(*[F.col(f"`{c}`").cast("string").alias(c) for c in mapped_columns]))
    typed = df.select(
        F.lit(name).alias("source_file"),
        F.lit(fingerprint).alias("content_sha256"),
        row_json.alias("raw_line"),
        event_id(source, fingerprint).alias("event_id"),
        *[raw_text(f).alias(f"raw_{f}") for f in MAPPED_FIELDS],
        F.when(customer_text.isNull() | (customer_text == ""), F.lit(None))
        .otherwise(customer_id_digits(customer_text)).alias("_customer_digits"),
        F.nullif(F.upper(_id_text(F.col(f"`{product_col}`"), product_type)), F.lit("")).alias("product_id"),
        (F.col(f"`{quantity_col}`").cast("double") if isinstance(quantity_type, T.NumericType)
         else F.expr(f"try_cast(trim(`{quantity_col}`) AS DOUBLE)")).alias("quantity"),
        _timestamp(F.col(f"`{ts_col}`"), ts_type, source.timestamp_format, key).alias("event_ts"),
        (F.lit(None).cast("double") if price_col is None
         else F.col(f"`{price_col}`").cast("double") if isinstance(price_type, T.NumericType)
         else F.expr(f"try_cast(trim(`{price_col}`) AS DOUBLE)")).alias("unit_price"),
        (F.lit(None).cast("string") if basket_col is None
         else F.nullif(_id_text(F.col(f"`{basket_col}`"), basket_type), F.lit(""))).alias("invoice_no"),
        F.nullif(title, F.lit("")).alias("product_title"),
        (F.lit(None).cast("string") if country_col is None
         else F.nullif(F.trim(F.col(f"`{country_col}`").cast("string")), F.lit(""))).alias("country"),
    )
    return classify_source_rows(typed, mapping, settings, source.timestamp_format)


def classify_source_rows(typed: DataFrame, mapping: dict[str, tuple[str, ...]], settings: IngestConfig,
                         timestamp_format: Optional[str] = None) -> DataFrame:
    """Give each typed row one reason and a detail naming the field and its source column."""
    def where(field_name: str) -> str:
        return f"{field_name} (column {', '.join(mapping[field_name])})"

    def given(field_name: str) -> Column:
        return F.coalesce(F.trim(F.col(f"raw_{field_name}")), F.lit("")) != ""

    quantity_not_finite = F.isnan("quantity") | (F.abs("quantity") == float("inf"))
    price_not_finite = F.isnan("unit_price") | (F.abs("unit_price") == float("inf"))
    ts_hint = f"the pattern {timestamp_format!r}" if timestamp_format else "ISO 8601"
    problems = [
        (F.col("product_id").isNull(), F.lit(f"{where('product_id')} is missing")),
        (F.col("quantity").isNull(), F.lit(f"{where('quantity')} is missing or not a number")),
        (quantity_not_finite, F.lit(f"{where('quantity')} is not a finite number")),
        (F.col("event_ts").isNull(), F.lit(f"{where('event_ts')} is missing or not a timestamp ({ts_hint})")),
        (given("customer_id") & (F.coalesce(F.col("_customer_digits"), F.lit("")) == ""),
         F.lit(f"{where('customer_id')} is not an integer id (digits with an optional .0)")),
    ]
    if "unit_price" in mapping:
        problems += [
            (given("unit_price") & F.col("unit_price").isNull(), F.lit(f"{where('unit_price')} is not a number")),
            (price_not_finite, F.lit(f"{where('unit_price')} is not a finite number")),
        ]
    unparsable = F.lit(False)
    for condition, _ in problems:
        unparsable = unparsable | F.coalesce(condition, F.lit(False))
    # concat_ws skips nulls itself; array_compact would be a lambda, which turns off code generation
    unparsable_detail = F.concat_ws("; ", *[F.when(c, d) for c, d in problems])

    out_of_range, out_of_range_detail = out_of_range_rules(
        settings, F.col("event_ts"), F.col("quantity"), F.col("unit_price"),
        [("date", "event_ts", F.col("event_ts").cast("string")), ("quantity", "quantity", F.col("raw_quantity")),
         ("price", "unit_price", F.col("raw_unit_price"))])
    reason = (
        F.when(unparsable, F.lit("unparsable_value"))
        .when(out_of_range, F.lit("out_of_range_value"))
        .when(~given("customer_id"), F.lit("missing_customer"))
        .when(F.col("quantity") <= 0, F.lit("non_positive_quantity"))
        .when(F.coalesce(F.col("unit_price") <= 0, F.lit(False)), F.lit("non_positive_price"))
    )
    detail = (
        F.when(unparsable, F.concat(F.lit("unparsable: "), unparsable_detail))
        .when(out_of_range, out_of_range_detail)
        .when(~given("customer_id"), F.lit(f"{where('customer_id')} is empty"))
        .when(F.col("quantity") <= 0, F.concat(F.lit(f"{where('quantity')} "), F.col("raw_quantity"),
                                               F.lit(" is not positive")))
        .when(F.coalesce(F.col("unit_price") <= 0, F.lit(False)),
              F.concat(F.lit("unit_price "), F.col("raw_unit_price"), F.lit(" is not positive")))
    )
    classified = typed.select(
        "*", reason.alias("reason"), detail.alias("detail"),
        F.nullif(F.col("_customer_digits"), F.lit("")).alias("customer_id"),
    ).drop("_customer_digits")
    return mark_source_duplicates(classified)


# Above this many repeated keys the rows sharing them are no longer picked out with a broadcast
# of their key hashes (8 bytes each); every row then goes through the windows.
REPEATED_KEYS_BROADCAST_LIMIT = 1_000_000


def mark_source_duplicates(classified: DataFrame) -> DataFrame:
    """Rows sharing a key: the first kept one (by its JSON) is kept, the others are
    duplicate_line. ``line_number`` is a 63-bit hash of the key and the row's place among the
    rows sharing it, so every row, duplicates included, has its own quarantine key.

    Runs one job: a count of the key hashes that repeat. Ranking rows within a key means
    sorting every row, raw JSON and all (a 13.3M-row source spent 290 s there on 2 cores), while
    a source almost never repeats a key; so only the rows whose key hash repeats are ranked,
    and the rest are each the first and only occurrence of their key."""
    key_hash = F.xxhash64("event_id").alias("_key_hash")
    repeated = (classified.select(key_hash).groupBy("_key_hash").count()
                .where(F.col("count") > 1).select("_key_hash", F.lit(True).alias("_repeated")))
    repeated_keys = repeated.count()
    if repeated_keys > REPEATED_KEYS_BROADCAST_LIMIT:
        return _rank_within_keys(classified)
    if repeated_keys == 0:
        return _first_occurrences(classified)
    flagged = classified.withColumn("_key_hash", key_hash).join(F.broadcast(repeated), "_key_hash", "left")
    sharing = flagged.where(F.col("_repeated").isNotNull()).drop("_key_hash", "_repeated")
    alone = flagged.where(F.col("_repeated").isNull()).drop("_key_hash", "_repeated")
    return _first_occurrences(alone).unionByName(_rank_within_keys(sharing))


def _line_number(occurrence: Column) -> Column:
    return F.xxhash64("event_id", occurrence).bitwiseAND(F.lit(_MAX_LONG)).alias("line_number")


def _first_occurrences(classified: DataFrame) -> DataFrame:
    """mark_source_duplicates for rows whose key no other row has: occurrence 1, reason as is."""
    return classified.select(
        *[c for c in classified.columns if c not in ("reason", "detail")],
        _line_number(F.lit(1)), "reason", "detail")


def _rank_within_keys(classified: DataFrame) -> DataFrame:
    by_key = Window.partitionBy("event_id").orderBy("raw_line")
    candidate = F.col("reason").isNull()
    among_kept = Window.partitionBy("event_id", candidate).orderBy("raw_line")
    marked = classified.select(
        "*", F.row_number().over(by_key).alias("_occurrence"),
        F.row_number().over(among_kept).alias("_kept_rank"),
        F.first("raw_line").over(among_kept).alias("_first"),
    )
    duplicate = candidate & (F.col("_kept_rank") > 1)
    return marked.select(
        *[c for c in classified.columns if c not in ("reason", "detail")],
        _line_number(F.col("_occurrence")),
        F.when(duplicate, F.lit("duplicate_line")).otherwise(F.col("reason")).alias("reason"),
        F.when(duplicate, F.concat(F.lit("the same purchase (key) as the row "), F.col("_first")))
        .otherwise(F.col("detail")).alias("detail"),
    )


RAW_TEXT_COLUMNS = ("raw_line", *[f"raw_{f}" for f in MAPPED_FIELDS])


def raw_text_of_quarantined_only(classified: DataFrame) -> DataFrame:
    """``classified`` (with ``forgotten``) with its raw text (``raw_line``, ``raw_*``) nulled on
    the rows no quarantine shows: kept and forgotten ones. The source row's JSON and raw fields
    were most of the bytes cached between the outcome count and the two MERGEs, and a null
    in a CASE WHEN branch spares computing the JSON of every kept row."""
    quarantined = F.col("reason").isNotNull() & ~F.col("forgotten")
    return classified.select(*[F.when(quarantined, F.col(c)).alias(c) if c in RAW_TEXT_COLUMNS else F.col(c)
                               for c in classified.columns])


def to_source_events(classified: DataFrame, ingested_at, catalogue_titles: Optional[DataFrame] = None) -> DataFrame:
    kept = classified.where(F.col("reason").isNull() & ~F.col("forgotten"))
    title = F.col("product_title")
    if catalogue_titles is not None:
        kept = kept.join(catalogue_titles.withColumnRenamed("title", "_catalogue_title"), "product_id", "left")
        title = F.coalesce(title, F.col("_catalogue_title"))
    return kept.select(
        "event_id", "customer_id", "product_id", title.alias("product_title"), "invoice_no", "quantity",
        "unit_price", "event_ts", "country", "source_file", "line_number", "content_sha256",
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
    )


# quarantine column -> the classified column holding that field of the source row as read,
# for ingest.to_quarantine (the landing files name theirs in ingest.LANDING_QUARANTINE_COLUMNS).
QUARANTINE_RAW_COLUMNS = {
    "invoice_no": "raw_basket_id", "stock_code": "raw_product_id", "description": "raw_title",
    "quantity": "raw_quantity", "invoice_date": "raw_event_ts", "unit_price": "raw_unit_price",
    "customer_id": "raw_customer_id", "country": "raw_country",
}


def read_catalogue(spark: SparkSession, config: AppConfig,
                   catalog: Optional[ProductCatalogConfig] = None) -> Optional[DataFrame]:
    """``ingest.products`` as product_id, title, product_group (one row per product), or None
    when unset."""
    catalog = catalog or config.ingest.products
    if not catalog.format:
        return None
    df = read_table(spark, config, catalog, "ingest.products")
    mapping = {"product_id": _names(catalog.columns.product_id), "title": _names(catalog.columns.title),
               "group": _names(catalog.columns.group)}
    check_mapping(df, {k: v for k, v in mapping.items() if v}, "ingest.products.columns")
    dtypes = {f.name: f.dataType for f in df.schema.fields}
    product_col = mapping["product_id"][0]
    title = (F.concat_ws(" ", *[F.trim(F.col(f"`{c}`").cast("string")) for c in mapping["title"]])
             if mapping["title"] else F.lit(None).cast("string"))
    group = (F.nullif(F.trim(F.col(f"`{mapping['group'][0]}`").cast("string")), F.lit(""))
             if mapping["group"] else F.lit(None).cast("string"))
    products = df.select(
        F.nullif(F.upper(_id_text(F.col(f"`{product_col}`"), dtypes[product_col])), F.lit("")).alias("product_id"),
        F.nullif(title, F.lit("")).alias("title"),
        group.alias("product_group"),
    ).where(F.col("product_id").isNotNull())
    # A catalogue listing a product twice: its smallest title and group, so the choice is
    # reproducible.
    return products.groupBy("product_id").agg(F.min("title").alias("title"),
                                               F.min("product_group").alias("product_group"))

