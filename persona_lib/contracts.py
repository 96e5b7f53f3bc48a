"""The Delta table contracts between the modules: one explicit schema per table.

docs/tables.md documents the same contracts for SQL users; ``tests/test_contracts.py``
checks that the two agree, and every writer goes through ``storage.conform`` with the schema
here, so the documentation, the code and the data cannot drift apart.

Key conventions: ``customer_id`` is a string holding the integer id ("17850", never
"17850.0"); ``product_id`` is the upper-cased, trimmed StockCode (the paper cut keys
products by their stripped title instead); persona names are the taxonomy's exact names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


def _schema(*fields: Tuple[str, object, bool]) -> StructType:
    return StructType([StructField(name, dtype, nullable) for name, dtype, nullable in fields])


RAW_FIELDS = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
    "CustomerID", "Country",
)

PURCHASE_EVENTS = _schema(
    ("event_id", StringType(), False),
    ("customer_id", StringType(), False),
    ("product_id", StringType(), False),
    ("product_title", StringType(), True),
    ("invoice_no", StringType(), False),
    ("quantity", IntegerType(), False),
    ("unit_price", DoubleType(), False),
    ("event_ts", TimestampType(), False),
    ("country", StringType(), True),
    ("source_file", StringType(), False),
    ("line_number", LongType(), False),
    ("ingested_at", TimestampType(), False),
)

PRODUCTS = _schema(
    ("product_id", StringType(), False),
    ("title", StringType(), True),
    ("first_seen", TimestampType(), True),
    ("last_seen", TimestampType(), True),
    ("events", LongType(), False),
    ("customers", LongType(), False),
)

QUARANTINE = _schema(
    ("source_file", StringType(), False),
    ("line_number", LongType(), False),
    ("reason", StringType(), False),
    ("detail", StringType(), True),
    ("raw_line", StringType(), True),
    ("invoice_no", StringType(), True),
    ("stock_code", StringType(), True),
    ("description", StringType(), True),
    ("quantity", StringType(), True),
    ("invoice_date", StringType(), True),
    ("unit_price", StringType(), True),
    ("customer_id", StringType(), True),
    ("country", StringType(), True),
    ("ingested_at", TimestampType(), False),
)

INGEST_LOG = _schema(
    ("ingest_id", StringType(), False),
    ("source_file", StringType(), False),
    ("rows_in", LongType(), False),
    ("rows_kept", LongType(), False),
    ("rows_quarantined", LongType(), False),
    ("rows_forgotten", LongType(), False),
    ("ingested_at", TimestampType(), False),
)

SYNTH_TRUTH = _schema(
    ("customer_id", StringType(), False),
    ("personas", ArrayType(StringType(), False), False),
)

PERSONA_LABELS = _schema(
    ("customer_id", StringType(), False),
    ("personas", ArrayType(StringType(), False), False),
    ("status", StringType(), False),
    ("detail", StringType(), True),
    ("source", StringType(), False),
    ("prompt_version", StringType(), True),
    ("taxonomy_version", StringType(), True),
    ("history_hash", StringType(), True),
    ("raw_response", StringType(), True),
    ("labelled_at", TimestampType(), False),
    ("run_id", StringType(), True),
)

PRODUCT_LABELS = _schema(
    ("product_id", StringType(), False),
    ("title", StringType(), True),
    ("personas", ArrayType(StringType(), False), False),
    ("status", StringType(), False),
    ("detail", StringType(), True),
    ("source", StringType(), False),
    ("prompt_version", StringType(), True),
    ("taxonomy_version", StringType(), True),
    ("title_hash", StringType(), True),
    ("raw_response", StringType(), True),
    ("labelled_at", TimestampType(), False),
    ("run_id", StringType(), True),
)

PERSONA_OVERRIDES = _schema(
    ("customer_id", StringType(), False),
    ("personas", ArrayType(StringType(), False), False),
    ("author", StringType(), False),
    ("reason", StringType(), True),
    ("created_at", TimestampType(), False),
)

RECORDED_ANSWERS = _schema(
    ("customer_id", StringType(), False),
    ("response", StringType(), True),
    ("model", StringType(), False),
)

CUSTOMER_AFFINITY = _schema(
    ("customer_id", StringType(), False),
    ("persona", StringType(), False),
    ("score", DoubleType(), False),
)

PRODUCT_AFFINITY = _schema(
    ("product_id", StringType(), False),
    ("persona", StringType(), False),
    ("score", DoubleType(), False),
)

PROPAGATION_RUNS = _schema(
    ("propagation_id", StringType(), False),
    ("method", StringType(), False),
    ("epsilon", DoubleType(), True),
    ("lhat", IntegerType(), False),
    ("beta", DoubleType(), False),
    ("seeds", LongType(), False),
    ("edges", LongType(), False),
    ("supersteps", IntegerType(), False),
    ("messages", ArrayType(LongType(), False), False),
    ("max_residual", DoubleType(), True),
    ("converged", BooleanType(), False),
    ("computed_at", TimestampType(), False),
)

WHY = StructType([
    StructField("products", ArrayType(StructType([
        StructField("product_id", StringType(), False),
        StructField("title", StringType(), True),
        StructField("weight", DoubleType(), False),
    ]), False), False),
    StructField("labelled_neighbours", LongType(), False),
    StructField("llm_evidence", StringType(), True),
])

PERSONA_AFFINITY = _schema(
    ("customer_id", StringType(), False),
    ("persona", StringType(), False),
    ("probability", DoubleType(), False),
    ("score", DoubleType(), False),
    ("rank", IntegerType(), False),
    ("source", StringType(), False),
    ("run_id", StringType(), False),
    ("computed_at", TimestampType(), False),
)

CUSTOMER_PERSONAS = _schema(
    ("customer_id", StringType(), False),
    ("personas", ArrayType(StringType(), False), False),
    ("source", StringType(), False),
    ("confidence", DoubleType(), True),
    ("is_ambiguous", BooleanType(), False),
    ("why", WHY, True),
    ("run_id", StringType(), False),
    ("computed_at", TimestampType(), False),
)

PRODUCT_PERSONAS = _schema(
    ("product_id", StringType(), False),
    ("persona", StringType(), False),
    ("score", DoubleType(), False),
    ("run_id", StringType(), False),
)

RUNS = _schema(
    ("run_id", StringType(), False),
    ("status", StringType(), False),
    ("started_at", TimestampType(), False),
    ("finished_at", TimestampType(), True),
    ("table_versions", MapType(StringType(), LongType(), False), False),
    ("summary", StringType(), True),
)

TOMBSTONES = _schema(
    # Only a salted-free SHA-256 of the id is kept, so the tombstone itself is not a trace.
    ("customer_hash", StringType(), False),
    ("forgotten_at", TimestampType(), False),
)

EVALUATION_PERSONAS = _schema(
    ("customer_id", StringType(), False),
    ("personas", ArrayType(StringType(), False), False),
    ("source", StringType(), False),
    ("budget", DoubleType(), False),
    ("sampler", StringType(), False),
    ("seed", IntegerType(), False),
)


@dataclass(frozen=True)
class TableContract:
    key: str  # the name of the table's entry in config.tables
    schema: StructType
    primary_key: Tuple[str, ...]
    written_by: str
    description: str


CONTRACTS: Tuple[TableContract, ...] = (
    TableContract("purchase_events", PURCHASE_EVENTS, ("event_id",), "ingest",
                  "One kept invoice line; event_id = sha256(source file name, line number)."),
    TableContract("products", PRODUCTS, ("product_id",), "ingest",
                  "One product; title is its most frequent title."),
    TableContract("quarantine", QUARANTINE, ("source_file", "line_number"), "ingest",
                  "One rejected landing line with exactly one reason."),
    TableContract("ingest_log", INGEST_LOG, ("ingest_id", "source_file"), "ingest",
                  "Per run and file: lines in = kept + quarantined + forgotten."),
    TableContract("synth_truth", SYNTH_TRUTH, ("customer_id",), "synth",
                  "The personas planted in each synthetic customer."),
    TableContract("persona_labels", PERSONA_LABELS, ("customer_id",), "labelling",
                  "The label store: one LLM (or manual) answer per customer, with its status: "
                  "ok, repaired (detail says what was fixed), unrepresentable, no_answer (the "
                  "backend had none) or failed (detail gives the reason). source is the backend "
                  "and model (replay:gpt-4-turbo, vllm:<model dir>, openai:<model>, manual). "
                  "A label is reused while history_hash (sha256 of the customer's product_id:"
                  "quantity list), prompt_version and taxonomy_version are unchanged, unless it "
                  "failed."),
    TableContract("product_labels", PRODUCT_LABELS, ("product_id",), "labelling",
                  "The product label store (labelling.products): one LLM answer per product title, "
                  "with the statuses and sources of persona_labels. A label is reused while "
                  "title_hash (sha256 of the title asked about), prompt_version (the product "
                  "prompt's own) and taxonomy_version are unchanged, unless it failed."),
    TableContract("persona_overrides", PERSONA_OVERRIDES, ("customer_id",), "labelling",
                  "Team overrides: they win in the outputs and count as labels."),
    TableContract("recorded_answers", RECORDED_ANSWERS, ("customer_id",), "labelling",
                  "Recorded LLM answers the replay labeller serves; response is the answer's "
                  "JSON ({\"personas\": [...]}), loaded once from labelling.replay_answers."),
    TableContract("customer_affinity", CUSTOMER_AFFINITY, ("customer_id", "persona"), "propagation",
                  "Raw walk affinity Psi[u, m], within epsilon of exact."),
    TableContract("product_affinity", PRODUCT_AFFINITY, ("product_id", "persona"), "propagation",
                  "Half-walk affinity of products (P' L)."),
    TableContract("propagation_runs", PROPAGATION_RUNS, ("propagation_id",), "propagation",
                  "Convergence figures of each propagation."),
    TableContract("persona_affinity", PERSONA_AFFINITY, ("customer_id", "persona"), "publishing",
                  "Per customer and persona: probability, raw score, rank, source."),
    TableContract("customer_personas", CUSTOMER_PERSONAS, ("customer_id",), "publishing",
                  "Per customer: persona names, source, confidence, ambiguity and why."),
    TableContract("product_personas", PRODUCT_PERSONAS, ("product_id", "persona"), "publishing",
                  "Per product and persona: affinity score."),
    TableContract("runs", RUNS, ("run_id",), "publishing",
                  "Written last by every run: its status and the version of every output table."),
    TableContract("tombstones", TOMBSTONES, ("customer_hash",), "forget",
                  "Forgotten customers (hashed); ingestion and labellers honour it."),
    TableContract("evaluation_personas", EVALUATION_PERSONAS, ("customer_id",), "evaluate",
                  "An accuracy evaluation's last run: LLM answers (source llm) or predicted personas."),
)

CONTRACTS_BY_KEY = {c.key: c for c in CONTRACTS}


DOC_HEADER = """# Table contracts

Generated from `persona_lib/contracts.py` by `python -m persona_lib.contracts > docs/tables.md`
(a test keeps the two equal). Every writer conforms its DataFrame to these schemas before it
writes. Names are the keys of `tables:` in the config: each resolves to a Delta path under
`<workdir>/tables` or to a `catalog.schema.table`.

Conventions: `customer_id` is a string holding the integer id ("17850", never "17850.0");
`product_id` is the upper-cased, trimmed StockCode (the paper cut keys products by their
stripped title); persona names are the taxonomy's exact names; timestamps are UTC.

Quarantine reasons, tested in this order (a line gets the first that applies):
malformed_line (not 8 CSV fields), unparsable_value (Quantity, UnitPrice, InvoiceDate or a
non-empty CustomerID that does not parse; the `detail` column names the field),
missing_customer, cancellation (InvoiceNo starts with "C"), excluded_country (paper cut
only), non_positive_quantity, non_positive_price, non_product_code (POST, DOT, M, BANK
CHARGES, AMAZONFEE, C2, PADS, D, CRUK, S, B; default cut only), duplicate_line (identical in
every field to an earlier line of the same invoice; the first is kept). The paper cut keeps
non-positive quantities and prices and non-product codes, as the paper did.

The paper cut and the synthetic data use the same contracts in their own tables
(`paper_*`, `synth_*`).
"""


def _type_name(dtype) -> str:
    return dtype.simpleString()


def render_markdown() -> str:
    parts = [DOC_HEADER]
    for contract in CONTRACTS:
        parts.append(f"\n## {contract.key}\n\n{contract.description}\n\n"
                     f"Written by `{contract.written_by}`; key: {', '.join(contract.primary_key)}.\n\n"
                     "| column | type | nullable |\n|---|---|---|")
        for f in contract.schema.fields:
            parts.append(f"\n| {f.name} | `{_type_name(f.dataType)}` | {'yes' if f.nullable else 'no'} |")
        parts.append("\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render_markdown(), end="")
