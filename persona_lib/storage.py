"""Delta table access: ``resolve_tables`` turns the config's ``tables:`` into ``Tables``, one
``TableRef`` per contract table (a path under the work dir, an absolute path or URI, or a
catalog table ``catalog.schema.table``), once per entry point. Every writer enforces its contract schema
(``persona_lib.contracts``) before it writes, so a table never drifts from its documentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, MapType, NumericType, StringType, StructType, TimestampNTZType, TimestampType

from persona_lib.config import TABLE_KEYS, AppConfig, catalog_table_name
from persona_lib.errors import InputError

_CATALOG_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_`][\w`-]*){1,2}$")


@dataclass(frozen=True)
class TableRef:
    """Where one Delta table lives: ``location`` is a path, or a catalog name when ``is_catalog``."""

    name: str
    location: str
    is_catalog: bool

    @property
    def sql_name(self) -> str:
        """How SQL names this table: the catalog name, or delta.`path`."""
        return self.location if self.is_catalog else f"delta.`{self.location}`"

    def exists(self, spark: SparkSession) -> bool:
        if self.is_catalog:
            return spark.catalog.tableExists(self.location)
        return DeltaTable.isDeltaTable(spark, self.location)

    def read(self, spark: SparkSession, version: Optional[int] = None) -> DataFrame:
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.table(self.location) if self.is_catalog else reader.load(self.location)

    def delta(self, spark: SparkSession) -> DeltaTable:
        if self.is_catalog:
            return DeltaTable.forName(spark, self.location)
        return DeltaTable.forPath(spark, self.location)

    def version(self, spark: SparkSession) -> int:
        """The table's latest committed Delta version."""
        return int(self.delta(spark).history(1).select("version").head()[0])

    def summary(self, spark: SparkSession) -> dict:
        return {"location": self.location, "version": self.version(spark)}


@dataclass(frozen=True)
class Tables:
    """Every table of the contracts (``persona_lib.contracts``), resolved once from the config
    (``resolve_tables``) at an entry point and passed down: what reads or writes a table takes
    this (or the one ``TableRef`` it needs), not the whole config."""

    purchase_events: TableRef
    products: TableRef
    quarantine: TableRef
    ingest_log: TableRef
    paper_purchase_events: TableRef
    paper_products: TableRef
    paper_quarantine: TableRef
    paper_ingest_log: TableRef
    synth_purchase_events: TableRef
    synth_products: TableRef
    synth_truth: TableRef
    persona_labels: TableRef
    product_labels: TableRef
    persona_overrides: TableRef
    recorded_answers: TableRef
    customer_affinity: TableRef
    product_affinity: TableRef
    propagation_runs: TableRef
    persona_affinity: TableRef
    customer_personas: TableRef
    product_personas: TableRef
    runs: TableRef
    tombstones: TableRef
    evaluation_personas: TableRef
    # Where a relative name lands: catalog.schema.<name> when both are set, else tables_dir/<name>.
    catalog: Optional[str] = None
    schema: Optional[str] = None
    tables_dir: str = ""

    def get(self, key: str) -> TableRef:
        """The table of a contract key (``"purchase_events"``); an unknown key is an error."""
        if key not in TABLE_KEYS:
            raise KeyError(f"no table {key!r}; known: {', '.join(TABLE_KEYS)}")
        return getattr(self, key)

    def items(self) -> tuple[tuple[str, TableRef], ...]:
        """(key, table) for every contract table, in TablesConfig order."""
        return tuple((key, getattr(self, key)) for key in TABLE_KEYS)

    def named(self, key: str, name: str) -> TableRef:
        """A table named outside the config (a command-line option), placed the way the
        configured ones are; ``key`` names it in messages."""
        return _place(key, name, self.catalog, self.schema, self.tables_dir)


def resolve_tables(config: AppConfig) -> Tables:
    """Where every configured table lives (``config.tables`` and the work dir), resolved once."""
    section = config.tables
    tables_dir = str(config.workdir_path / "tables")
    refs = {key: _place(key, getattr(section, key), section.catalog, section.schema, tables_dir)
            for key in TABLE_KEYS}
    return Tables(**refs, catalog=section.catalog, schema=section.schema, tables_dir=tables_dir)


def _place(key: str, name: str, catalog: Optional[str], schema: Optional[str], tables_dir: str) -> TableRef:
    if "://" in name or name.startswith(("dbfs:", "/")):
        return TableRef(key, name, is_catalog=False)
    if _CATALOG_NAME.match(name) and "/" not in name:
        return TableRef(key, name, is_catalog=True)
    if catalog and schema:
        return TableRef(key, f"{catalog}.{schema}.{catalog_table_name(name)}", is_catalog=True)
    return TableRef(key, str(Path(tables_dir) / name), is_catalog=False)


def conform(df: DataFrame, schema: StructType, table: str) -> DataFrame:
    """Select and cast ``df`` to the contract ``schema``; a missing column is an error."""
    missing = [f.name for f in schema.fields if f.name not in df.columns]
    if missing:
        raise InputError(f"{table}: missing column(s) {missing} required by its contract")
    current = {f.name: f.dataType for f in df.schema.fields}

    def column(field):
        # Types equal but for nullability are kept as they are: Spark cannot cast a
        # nullable-element array to a non-null one, and Delta accepts both.
        if current[field.name].simpleString() == field.dataType.simpleString():
            return F.col(field.name)
        return F.col(field.name).cast(field.dataType).alias(field.name)

    return df.select([column(f) for f in schema.fields])


# Columns that hold a customer id, or free text that may quote one (a raw landing line, an
# LLM's answer, a quarantine detail). Delta keeps min/max statistics of every column in its
# transaction log, where a deleted customer's id would outlive the deletion, so these columns
# are left out of the statistics (delta.dataSkippingStatsColumns lists the columns that keep
# them). Nothing reads these columns by range, so data skipping loses nothing that matters.
ID_BEARING_COLUMNS = ("customer_id", "raw_line", "raw_response", "response", "detail", "why")
STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"


# The types Delta keeps min/max statistics of (it refuses the property naming any other).
_STATABLE_TYPES = (StringType, NumericType, DateType, TimestampType, TimestampNTZType)
# A table holding raw landing lines (quarantine): every text column of a malformed line may
# hold any field, the id included, so only these keep statistics.
RAW_LINE_STATS_COLUMNS = ("source_file", "line_number", "reason", "ingested_at")


def id_safe_properties(schema: StructType) -> dict:
    """The table properties that keep customer ids out of Delta's log statistics."""
    column_names = schema.fieldNames()
    if not any(name in ID_BEARING_COLUMNS for name in column_names):
        return {}
    statable = [f.name for f in schema.fields if isinstance(f.dataType, _STATABLE_TYPES)]
    if "raw_line" in column_names:
        kept = [name for name in statable if name in RAW_LINE_STATS_COLUMNS]
    else:
        kept = [name for name in statable if name not in ID_BEARING_COLUMNS]
    return {STATS_COLUMNS_PROPERTY: ",".join(kept)}


def protect_ids(spark: SparkSession, ref: TableRef) -> bool:
    """Set the id-safe statistics property on an existing table (tables created before it was
    introduced); returns whether it had to be set. Files written before keep their stats in
    the log until log cleanup (README "Deletion")."""
    wanted = id_safe_properties(ref.read(spark).schema)
    if not wanted:
        return False
    properties = ref.delta(spark).detail().select("properties").first()["properties"] or {}
    if properties.get(STATS_COLUMNS_PROPERTY) == wanted[STATS_COLUMNS_PROPERTY]:
        return False
    spark.sql(f"ALTER TABLE {ref.sql_name} SET TBLPROPERTIES "
              f"('{STATS_COLUMNS_PROPERTY}' = '{wanted[STATS_COLUMNS_PROPERTY]}')")
    return True


def ensure_table(spark: SparkSession, ref: TableRef, schema: StructType,
                 partition_by: Sequence[str] = (), properties: Optional[dict] = None) -> None:
    """Create the table empty with its contract schema if it does not exist yet (with the
    id-safe statistics property when it holds customer ids)."""
    if ref.exists(spark):
        return
    properties = {**id_safe_properties(schema), **(properties or {})}
    builder = DeltaTable.createIfNotExists(spark)
    builder = builder.tableName(ref.location) if ref.is_catalog else builder.location(ref.location)
    builder = builder.addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    builder.execute()


def overwrite(df: DataFrame, ref: TableRef, schema: StructType, partition_by: Sequence[str] = ()) -> None:
    """Replace the table's content in one Delta commit (readers see the old or the new, never half)."""
    writer = _writer(df, ref, schema, "overwrite").option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    _save(writer, ref)


def append(df: DataFrame, ref: TableRef, schema: StructType) -> None:
    _save(_writer(df, ref, schema, "append"), ref)


def replace_where(df: DataFrame, ref: TableRef, schema: StructType, predicate: str) -> None:
    """The table's rows matching ``predicate`` become ``df`` (whose rows must all match it), in
    one Delta commit that conflicts with any concurrent commit touching those rows."""
    _save(_writer(df, ref, schema, "overwrite").option("replaceWhere", predicate), ref)


def _writer(df: DataFrame, ref: TableRef, schema: StructType, mode: str):
    writer = conform(df, schema, ref.name).write.format("delta").mode(mode)
    # "delta."-options become table properties when the write creates the table.
    for key, value in id_safe_properties(schema).items():
        writer = writer.option(key, value)
    return writer


def _save(writer, ref: TableRef) -> None:
    if ref.is_catalog:
        writer.saveAsTable(ref.location)
    else:
        writer.save(ref.location)


def merge_insert_new(spark: SparkSession, df: DataFrame, ref: TableRef, schema: StructType,
                     keys: Sequence[str], partition_by: Sequence[str] = ()) -> None:
    """Insert the rows whose ``keys`` are not in the table yet: re-running adds nothing."""
    ensure_table(spark, ref, schema, partition_by)
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    (
        ref.delta(spark).alias("t")
        .merge(conform(df, schema, ref.name).alias("s"), condition)
        .whenNotMatchedInsertAll()
        .execute()
    )


def merge_upsert(spark: SparkSession, df: DataFrame, ref: TableRef, schema: StructType,
                 keys: Sequence[str], partition_by: Sequence[str] = ()) -> None:
    """Insert new keys and update changed rows; rows equal in every column are left alone."""
    ensure_table(spark, ref, schema, partition_by)
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    source = conform(df, schema, ref.name)
    # Only rows that differ from the table go into the MERGE: a MERGE whose matched rows are
    # all unchanged would still rewrite their files and commit a new version.
    target = ref.read(spark)
    # A table written before its contract gained a nullable column: every row is rewritten
    # and the MERGE adds the column.
    older = [f.name for f in schema.fields if f.name not in target.columns]
    same = [_comparable(source[f.name], f).eqNullSafe(_comparable(target[f.name], f)) for f in schema.fields
            if f.name not in older]
    changed_rows = source if older else source.join(target, on=_all(same), how="left_anti")
    (
        ref.delta(spark).alias("t")
        .merge(changed_rows.alias("s"), condition)
        .withSchemaEvolution()
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )


def _comparable(column, field):
    # Maps have no equality in Spark SQL; their JSON text does (keys in insertion order,
    # which is the same for rows built the same way).
    return F.to_json(column) if isinstance(field.dataType, MapType) else column


def _all(conditions):
    combined = conditions[0]
    for condition in conditions[1:]:
        combined = combined & condition
    return combined
