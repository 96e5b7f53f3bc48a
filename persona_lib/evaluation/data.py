"""Readers of the vendored GPLR OnlineRetail files (data/gplr_online_retail, see its README).

Every reader returns the pipeline's keys: ``customer_id`` a string ("17850"), ``product_id``
the product name (Description, stripped), ``persona`` one row per persona. A row that
cannot be keyed is an InputError naming the file and the field, never silently dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from persona_lib.config import AppConfig, existing_path
from persona_lib.errors import InputError
from persona_lib.labelling.answers import PERSONA_SEPARATOR, UNREPRESENTABLE, read_recorded_answers, recorded_labels

USER_LABELS_FILE = "user_labels.csv.gz"
ITEM_LABELS_FILE = "item_labels.csv.gz"
TRAIN_FILE = "split_train.csv.gz"
TEST_FILE = "split_test.csv.gz"
AUTHORS_DIR = "authors_gplr_outputs"
# The authors' main GPLR output per budget (DU sampler, lhat 1); other files are ablations.
AUTHORS_FILE_PATTERN = "dataset_MBA_{percent}%_tri_graph_uidx2pidx_approach.csv.gz"
AUTHORS_RANDOM_FILES = {20: "dataset_MBA_tri_graph_uidx2pidx_app20_random_1.csv.gz"}

def data_dir(config: AppConfig) -> Path:
    """The vendored GPLR folder; missing, a ConfigError names the key and the resolved path."""
    return existing_path(config, "evaluation.data_dir")


def _csv(spark: SparkSession, path: Path, columns: tuple[str, ...]) -> DataFrame:
    if not path.is_file():
        raise InputError(f"{path}: file not found (the vendored GPLR OnlineRetail data)")
    schema = StructType([StructField(c, StringType(), True) for c in columns])
    frame = spark.read.csv(str(path), header=True, schema=schema, enforceSchema=False, mode="FAILFAST")
    return frame


def _require(frame: DataFrame, path: Path, fields: tuple[str, ...]) -> DataFrame:
    """Fail on the first row with an empty key field (naming file, field and row)."""
    for name in fields:
        bad = frame.where(F.col(name).isNull() | (F.trim(F.col(name)) == "")).limit(1).collect()
        if bad:
            raise InputError(f"{path}: empty field {name!r} in row {bad[0].asDict()}")
    return frame


def _exploded(frame: DataFrame, key: str, key_alias: str) -> DataFrame:
    """(key, persona) rows from a pipe-separated ``personas`` column, Unrepresentable dropped."""
    return (
        frame.select(F.col(key).alias(key_alias),
                     F.explode(F.split(F.col("personas"), re.escape(PERSONA_SEPARATOR))).alias("persona"))
        .select(key_alias, F.trim("persona").alias("persona"))
        .where((F.col("persona") != "") & (F.col("persona") != UNREPRESENTABLE))
        .dropDuplicates([key_alias, "persona"])
    )


def read_user_labels(spark: SparkSession, path: Path) -> DataFrame:
    """(customer_id, persona): the recorded LLM labels; Unrepresentable customers dropped."""
    return recorded_labels(read_recorded_answers(spark, path, where="evaluation.data_dir"))


def read_item_labels(spark: SparkSession, path: Path) -> DataFrame:
    """(product_id, persona): the LLM's labels of each product (product_id = stripped name)."""
    frame = _csv(spark, path, ("Description", "StockCode", "personas", "author_tidx"))
    frame = _require(frame, path, ("Description",)).where(F.col("personas").isNotNull())
    return _exploded(frame.withColumn("Description", F.trim("Description")), "Description", "product_id")


def read_pairs(spark: SparkSession, path: Path) -> DataFrame:
    """(customer_id, product_id): one row per distinct pair of a split file."""
    frame = _require(_csv(spark, path, ("CustomerID", "Description", "author_uidx", "author_tidx")), path,
                     ("CustomerID", "Description"))
    return frame.select(F.trim("CustomerID").alias("customer_id"),
                        F.trim("Description").alias("product_id")).distinct()


def authors_output_path(config: AppConfig, budget: float, sampler: str = "du") -> Optional[Path]:
    """The authors' released GPLR output at ``budget`` (a fraction) with ``sampler``, None
    where none exists: DU at 5/10/20/30%, random at 20% only."""
    percent = round(budget * 100)
    if abs(percent - budget * 100) > 1e-9:
        return None
    name = AUTHORS_FILE_PATTERN.format(percent=percent) if sampler == "du" else \
        AUTHORS_RANDOM_FILES.get(percent)
    path = data_dir(config) / AUTHORS_DIR / name if name else None
    return path if path is not None and path.is_file() else None


def read_authors_output(spark: SparkSession, path: Path) -> DataFrame:
    """(customer_id, persona) of one of the authors' output files."""
    frame = _require(_csv(spark, path, ("CustomerID", "personas", "author_uidx")), path, ("CustomerID",))
    return _exploded(frame.withColumn("CustomerID", F.trim("CustomerID")), "CustomerID", "customer_id")


def user_labels(spark: SparkSession, config: AppConfig) -> DataFrame:
    return read_user_labels(spark, data_dir(config) / USER_LABELS_FILE)


def item_labels(spark: SparkSession, config: AppConfig) -> DataFrame:
    return read_item_labels(spark, data_dir(config) / ITEM_LABELS_FILE)


def train_pairs(spark: SparkSession, config: AppConfig) -> DataFrame:
    return read_pairs(spark, data_dir(config) / TRAIN_FILE)


def test_pairs(spark: SparkSession, config: AppConfig) -> DataFrame:
    return read_pairs(spark, data_dir(config) / TEST_FILE)


def item_label_answers(spark: SparkSession, config: AppConfig) -> int:
    """LLM answers spent on product labels: one per row of item_labels (3,846 products)."""
    path = data_dir(config) / ITEM_LABELS_FILE
    return _csv(spark, path, ("Description", "StockCode", "personas", "author_tidx")).count()
