"""Labels without an LLM: the team's answers from a CSV file or a table, into persona_labels.

The input has the columns ``customer_id`` and ``personas``: pipe-separated taxonomy names
("Gardening Lover|Party Planner"); an empty value (or ``Unrepresentable``) means "none of
these". A table's ``personas`` may also be an array of names.

Every row is checked before anything is written; any problem fails the whole load (exit 3)
with the file, line and field (or the table and customer id) of the first problems:
- a customer id that is not one (the landing files' rule, ``ingest_files.parse_customer_id``),
  or one that is not in purchase_events (a typo would label nobody, or someone else);
- a persona name that is not the taxonomy's (case, spacing and plural variants are mapped,
  misspellings are not: they are suggested);
- the same customer twice with different answers (the same answer twice is fine).

The labels are stored with source ``file:<file or table name>``, status ``ok`` (or
``unrepresentable`` for "none of these"), the taxonomy version and the raw ``personas`` text.
They are never re-sent to an LLM nor overwritten by a labelling round (``store.is_file_label``).
Loading is a MERGE on customer_id, and rows equal to the stored label are left alone: loading
the same file again writes nothing. The file is read on the driver (it holds labels a team
wrote, not events) and checked there first (``check_file_rows``), so a bad file fails before
Spark starts; the same checks, the one against purchase_events and the write run in Spark.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType

from persona_lib import storage
from persona_lib.config import AppConfig
from persona_lib.errors import InputError
from persona_lib.ingest_files import open_content, parse_customer_id, split_records
from persona_lib.labelling.backends import read_or_empty
from persona_lib.labelling.store import FILE_SOURCE, label_distribution, labels_ref, persona_names, write_labels
from persona_lib.labelling.validation import OK, UNREPRESENTABLE_STATUS
from persona_lib.taxonomy import Taxonomy, load_taxonomy

COLUMNS = ("customer_id", "personas")
# How many problems an error lists (their total is said too).
MAX_REPORTED = 5

RAW_ROWS = StructType([
    StructField("line", LongType(), True),  # null for a table: rows of a table have no line
    StructField("raw_customer_id", StringType(), True),
    StructField("raw_personas", StringType(), True),
])
CHECKED_ROWS = StructType(RAW_ROWS.fields + [
    StructField("customer_id", StringType(), True),
    StructField("personas", ArrayType(StringType(), False), True),
    StructField("field", StringType(), True),
    StructField("problem", StringType(), True),
])


def read_labels_csv(path: Path) -> list[tuple[int, Optional[str], Optional[str]]]:
    """RAW_ROWS tuples (line, raw customer_id, raw personas) of a labels CSV (header
    ``customer_id,personas``; more columns are ignored; blank lines are skipped).

    File-level faults (missing, not UTF-8, no such columns) are InputErrors naming the file;
    a line the CSV reader rejects, or with too few fields, becomes a row whose customer id is
    None and whose personas say why (``check_record`` reports it as field ``line``).
    """
    if not path.is_file():
        raise InputError(f"labels file not found: {path}")
    content = open_content(path.name, path.read_bytes())
    if content.problem:
        raise InputError(f"labels file {path}: {content.problem}")
    records = split_records(content.text)
    header = next(records)
    if header.error:
        raise InputError(f"labels file {path} line 1: {header.error}")
    names = [f.strip().lower() for f in header.fields or []]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise InputError(f"labels file {path} line 1: no column(s) {missing} in the header {header.fields}; "
                         f"expected the columns {list(COLUMNS)}")
    id_at, personas_at = names.index("customer_id"), names.index("personas")
    rows: list[tuple[int, Optional[str], Optional[str]]] = []
    for record in records:
        if record.fields is not None and not any(f.strip() for f in record.fields):
            continue
        if record.error or record.fields is None or len(record.fields) <= max(id_at, personas_at):
            rows.append((record.line_number, None, record.error or f"only {len(record.fields or [])} field(s)"))
            continue
        rows.append((record.line_number, record.fields[id_at], record.fields[personas_at]))
    return rows


def check_record(line: Optional[int], raw_id: Optional[str], raw_personas: Optional[str],
                 taxonomy: Taxonomy) -> tuple[Optional[str], Optional[list[str]], Optional[str], Optional[str]]:
    """(customer_id, personas, None, None) of a good row, or (None, None, field, problem)."""
    if raw_id is None and line is not None:  # read_labels_csv's unreadable record
        return None, None, "line", f"not a customer_id,personas record: {raw_personas}"
    customer_id = parse_customer_id(raw_id)
    if customer_id is None:
        return None, None, "customer_id", f"{raw_id!r} is not a customer id (digits, optionally .0)"
    names, problem = persona_names(raw_personas or "", taxonomy)
    if problem:
        return None, None, "personas", problem
    return customer_id, names, None, None


def check_file_rows(rows: list[tuple[int, Optional[str], Optional[str]]], path: Path, taxonomy: Taxonomy) -> None:
    """Every check of ``label_problems`` but the one against purchase_events, in plain Python:
    a bad file fails before Spark starts. Raises the same InputError."""
    problems, answers = [], {}
    for line, raw_id, raw_personas in rows:
        customer_id, names, field, problem = check_record(line, raw_id, raw_personas, taxonomy)
        if field:
            problems.append((line, raw_id, field, problem))
            continue
        answers.setdefault(customer_id, []).append((line, "|".join(sorted(names))))
    for customer_id, seen in answers.items():
        if len({answer for _, answer in seen}) > 1:
            lines = sorted(line for line, _ in seen)
            problems.append((lines[0], customer_id, "customer_id",
                             f"customer {customer_id} has different personas on lines "
                             + ", ".join(map(str, lines[:MAX_REPORTED]))))
    problems.sort(key=lambda p: (p[0], p[2]))
    _raise(problems[:MAX_REPORTED], len(problems), f"labels file {path}")


def read_labels_table(spark: SparkSession, tables: storage.Tables, name: str) -> DataFrame:
    """RAW_ROWS of a Delta path or catalog table with the columns customer_id and personas."""
    ref = tables.named("labels", name)
    if not ref.exists(spark):
        raise InputError(f"labels table not found: {ref.location}")
    table = ref.read(spark)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"labels table {ref.location}: no column(s) {missing}; expected {list(COLUMNS)}")
    personas = F.col("personas")
    if isinstance(table.schema["personas"].dataType, ArrayType):
        personas = F.concat_ws("|", personas)
    return table.select(F.lit(None).cast("long").alias("line"),
                        F.col("customer_id").cast("string").alias("raw_customer_id"),
                        personas.cast("string").alias("raw_personas"))


def check_rows(raw: DataFrame, taxonomy: Taxonomy) -> DataFrame:
    """CHECKED_ROWS: each row's canonical customer_id and personas, or the field and problem."""

    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            results = [
                check_record(None if pd.isna(line) else int(line), None if pd.isna(raw_id) else raw_id,
                             None if pd.isna(raw_personas) else raw_personas, taxonomy)
                for line, raw_id, raw_personas in zip(batch["line"], batch["raw_customer_id"], batch["raw_personas"])
            ]
            out = batch.copy()
            for index, column in enumerate(("customer_id", "personas", "field", "problem")):
                out[column] = [result[index] for result in results]
            yield out

    return raw.mapInPandas(check, CHECKED_ROWS)


def label_problems(checked: DataFrame, customers: DataFrame) -> DataFrame:
    """(line, raw_customer_id, field, problem) of every problem of the checked rows."""
    row_problems = checked.where(F.col("problem").isNotNull())
    valid = checked.where(F.col("problem").isNull())
    answer = F.concat_ws("|", F.array_sort("personas"))
    conflicting = (
        valid.groupBy("customer_id")
        .agg(F.min("line").alias("line"), F.first("raw_customer_id").alias("raw_customer_id"),
             F.collect_set(answer).alias("answers"), F.array_sort(F.collect_list("line")).alias("lines"))
        .where(F.size("answers") > 1)
        .select("line", "raw_customer_id", F.lit("customer_id").alias("field"),
                F.concat(F.lit("customer "), F.col("customer_id"), F.lit(" has different personas on lines "),
                         F.concat_ws(", ", F.slice(F.col("lines").cast("array<string>"), 1, MAX_REPORTED)))
                .alias("problem"))
    )
    unknown = (
        valid.join(customers, "customer_id", "left_anti")
        .select("line", "raw_customer_id", F.lit("customer_id").alias("field"),
                F.concat(F.lit("customer "), F.col("customer_id"),
                         F.lit(" is not in purchase_events (not an ingested customer)")).alias("problem"))
    )
    return (row_problems.select("line", "raw_customer_id", "field", "problem")
            .unionByName(conflicting).unionByName(unknown))


def raise_if_problems(problems: DataFrame, where: str) -> None:
    """InputError listing the first problems (by line) of ``where``, if there is any."""
    first = problems.orderBy(F.col("line").asc_nulls_last(), "raw_customer_id", "field").limit(MAX_REPORTED).collect()
    if first:
        _raise([(r["line"], r["raw_customer_id"], r["field"], r["problem"]) for r in first], problems.count(), where)


def _raise(first: list[tuple], total: int, where: str) -> None:
    if not first:
        return

    def place(line, raw_id, field, problem) -> str:
        at = f"line {line}" if line is not None else f"customer_id {raw_id!r}"
        return f"{where} {at}, field {field}: {problem}"

    shown = "" if total <= len(first) else f" (the first {len(first)} shown)"
    raise InputError(f"{total} problem(s) in {where}{shown}; nothing was written:\n  "
                     + "\n  ".join(place(*problem) for problem in first))


def load_labels(spark: SparkSession, config: AppConfig, tables: storage.Tables, raw: DataFrame, where: str,
                source_name: str, run_id: str) -> dict:
    """Check ``raw`` (RAW_ROWS) and MERGE its labels into persona_labels; the load's summary."""
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    events = tables.purchase_events
    if not events.exists(spark):
        raise InputError(f"purchase_events not found at {events.location}: run `personas ingest` "
                         f"(with the same --workdir/--conf) before loading labels")
    customers = events.read(spark).select("customer_id").distinct()
    checked = check_rows(raw, taxonomy).localCheckpoint()
    raise_if_problems(label_problems(checked, customers), where)

    source = f"{FILE_SOURCE}:{source_name}"
    labels = (
        checked.dropDuplicates(["customer_id"])
        .select("customer_id", "personas",
                F.when(F.size("personas") > 0, F.lit(OK)).otherwise(F.lit(UNREPRESENTABLE_STATUS)).alias("status"),
                F.lit(None).cast("string").alias("detail"), F.lit(source).alias("source"),
                F.lit(None).cast("string").alias("prompt_version"),
                F.lit(taxonomy.version).alias("taxonomy_version"),
                F.lit(None).cast("string").alias("history_hash"),
                F.col("raw_personas").alias("raw_response"),
                F.current_timestamp().alias("labelled_at"), F.lit(run_id).alias("run_id"))
        .localCheckpoint()
    )
    # Rows whose stored label says the same are left alone: a reload writes nothing.
    stored = read_or_empty(spark, tables.persona_labels)
    same = [F.col(f"s.{c}").eqNullSafe(F.col(f"n.{c}"))
            for c in ("customer_id", "personas", "status", "source", "taxonomy_version", "raw_response")]
    condition = same[0]
    for clause in same[1:]:
        condition = condition & clause
    changed = labels.alias("n").join(stored.alias("s"), condition, "left_anti").localCheckpoint()
    figures = labels.agg(F.count(F.lit(1)).alias("rows"),
                         F.sum((F.col("status") == UNREPRESENTABLE_STATUS).cast("int")).alias("none")).first()
    written = changed.count()
    if written:
        write_labels(spark, tables, changed)
    without_seed = personas_without_seed(taxonomy, label_distribution(spark, tables, config.forget))
    return {
        "source": source,
        "run_id": run_id,
        "taxonomy": taxonomy.name,
        "taxonomy_version": taxonomy.version,
        "labels": int(figures["rows"]),
        "none_of_these": int(figures["none"] or 0),
        "written": written,
        "unchanged": int(figures["rows"]) - written,
        "personas_without_seed": without_seed,
        "tables": {"persona_labels": labels_ref(spark, tables).summary(spark)},
        "loaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def personas_without_seed(taxonomy: Taxonomy, distribution: dict[str, int]) -> list[str]:
    """The taxonomy's personas no labelled customer has (in taxonomy order): propagation has
    nothing to spread for them, so no customer gets them but through the model."""
    return [name for name in taxonomy.names if not distribution.get(name)]


def load_labels_file(spark: SparkSession, config: AppConfig, tables: storage.Tables, path: Path, run_id: str,
                     rows: Optional[list[tuple[int, Optional[str], Optional[str]]]] = None) -> dict:
    """Load a labels CSV (``rows``: its ``read_labels_csv``, when the caller has read it)."""
    rows = read_labels_csv(path) if rows is None else rows
    raw = spark.createDataFrame(rows, RAW_ROWS)
    return load_labels(spark, config, tables, raw, f"labels file {path}", path.name, run_id)


def load_labels_table(spark: SparkSession, config: AppConfig, tables: storage.Tables, name: str,
                      run_id: str) -> dict:
    raw = read_labels_table(spark, tables, name)
    return load_labels(spark, config, tables, raw, f"labels table {name}", name, run_id)
