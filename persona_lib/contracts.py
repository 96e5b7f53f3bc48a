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
    # Null where a mapped source has no basket / price column (ingest.source.columns: null).
    ("invoice_no", StringType(), True),
    # DOUBLE: weights and fractional quantities are normal in grocery.
    ("quantity", DoubleType(), False),
    ("unit_price", DoubleType(), True),
    ("event_ts", TimestampType(), False),
    ("country", StringType(), True),
    ("source_file", StringType(), False),
    ("line_number", LongType(), False),
    # The landing file content the event came from, or a mapped source's fingerprint (its
    # ingest_log row); null for synthetic events.
    ("content_sha256", StringType(), True),
    ("ingested_at", TimestampType(), False),
)

PRODUCTS = _schema(
    ("product_id", StringType(), False),
    ("title", StringType(), True),
    ("first_seen", TimestampType(), True),
    ("last_seen", TimestampType(), True),
    ("events", LongType(), False),
    ("customers", LongType(), False),
    # The catalogue's group (ingest.products.columns.group): graph.product_key group keys the
    # graph by it.
    ("product_group", StringType(), True),
)

QUARANTINE = _schema(
    ("source_file", StringType(), False),
    ("line_number", LongType(), False),
    ("content_sha256", StringType(), False),
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
    ("content_sha256", StringType(), False),
    ("status", StringType(), False),
    ("detail", StringType(), True),
    ("rows_in", LongType(), False),
    ("rows_kept", LongType(), False),
    ("rows_quarantined", LongType(), False),
    ("rows_forgotten", LongType(), False),
    ("ingested_at", TimestampType(), False),
    # A change_feed source: the source table's Delta version this load read up to.
    ("source_version", LongType(), True),
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
    # HMAC-SHA256 of the id under the secret tombstone key (persona_lib.tombstones.customer_hash):
    # without the key it cannot be tested against guessed ids, so it is not itself a trace.
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
                  "One kept purchase. From landing files (ingest.source.format uci_landing): "
                  "event_id = sha256(content_sha256:line_number), the file content's hash and the "
                  "line the record starts on, never the file name; source_file is the name the "
                  "content was first ingested under. From a mapped source (delta, parquet, csv, "
                  "table, query): source_file names the source, content_sha256 is the source's "
                  "fingerprint (its format, location and column mapping), event_id = "
                  "sha256(fingerprint and the row's key: ingest.source.key, else every mapped "
                  "column) and line_number a 63-bit hash of the same; invoice_no, unit_price, "
                  "product_title and country are null where the mapping names no column."),
    TableContract("products", PRODUCTS, ("product_id",), "ingest",
                  "One product; title is its most frequent title (the catalogue's, when "
                  "ingest.products is set) and product_group its catalogue group (null without one)."),
    TableContract("quarantine", QUARANTINE, ("content_sha256", "line_number"), "ingest",
                  "One rejected source record with exactly one reason; detail says what is wrong "
                  "and names the field. For a mapped source the raw columns hold the mapped "
                  "columns' values as text and raw_line the source row as JSON."),
    TableContract("ingest_log", INGEST_LOG, ("source_file", "content_sha256"), "ingest",
                  "The file manifest, written last by each ingestion (its commit marker): one row "
                  "per file name and content. status: ingested (the tables hold its rows; records "
                  "in = kept + quarantined + forgotten), replaced (a name's earlier content, "
                  "swapped out under ingest.on_changed_file: replace), conflicting_redelivery (a "
                  "changed file under an ingested name, refused under reject: nothing written) or "
                  "failed (unreadable: detail gives the reason). Identical content under any name "
                  "is skipped and gets no new row. ingest_id and ingested_at: the run that wrote "
                  "the row. A mapped source has one row (source_file: its format and location); "
                  "its counts are those of the last run that changed the tables, over the rows "
                  "that run read (all of them, or the incremental window), and source_version is "
                  "the source table's Delta version a change_feed source was read up to (null "
                  "otherwise)."),
    TableContract("synth_truth", SYNTH_TRUTH, ("customer_id",), "synth",
                  "The personas planted in each synthetic customer."),
    TableContract("persona_labels", PERSONA_LABELS, ("customer_id",), "labelling",
                  "The label store: one LLM (or manual, or file) answer per customer, with its status: "
                  "ok, repaired (detail says what was fixed), unrepresentable, no_answer (the "
                  "backend had none) or failed (detail gives the reason). source is the backend "
                  "and model (replay:gpt-4-turbo, vllm:<model dir>, openai:<model>, manual), or "
                  "file:<file or table name> for the team's labels (personas label --from-file; "
                  "unrepresentable there means none of these; raw_response holds the file's text, "
                  "prompt_version and history_hash are null). "
                  "A label is reused while history_hash (sha256 of the customer's product_id:"
                  "quantity list), prompt_version and taxonomy_version are unchanged, unless it "
                  "failed; a file label is never re-sent to an LLM nor overwritten by one."),
    TableContract("product_labels", PRODUCT_LABELS, ("product_id",), "labelling",
                  "The product label store (labelling.products): one LLM answer per product title, "
                  "with the statuses and sources of persona_labels. A label is reused while "
                  "title_hash (sha256 of the title asked about), prompt_version (the product "
                  "prompt's own) and taxonomy_version are unchanged, unless it failed."),
    TableContract("persona_overrides", PERSONA_OVERRIDES, ("customer_id",), "labelling",
                  "Team overrides (personas override add|remove): they win in the outputs and count "
                  "as labels; an empty personas list is none of these (negative for every persona). "
                  "Author and reason of each change are also the Delta commit's userMetadata."),
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
                  "Per customer and persona: probability, raw score, rank, source. For propagated customers "
                  "`probability` is the persona model's calibrated probability that the LLM would name the "
                  "persona (multi-label: a customer's probabilities do not sum to 1), `rank` orders them "
                  "(1 = most probable) and `score` is the raw walk affinity, certified within epsilon (0 "
                  "where the walk did not reach). Labelled and overridden customers: their labels, "
                  "probability 1."),
    TableContract("customer_personas", CUSTOMER_PERSONAS, ("customer_id",), "publishing",
                  "Per customer: persona names, source, confidence, ambiguity and why. Propagated: `personas` "
                  "are those at or above their persona's threshold (at least the most probable one when a "
                  "labelled customer was reached), `confidence` their mean calibrated probability, "
                  "`is_ambiguous` true when the epsilon certificate cannot settle a decision or the "
                  "evidence is thin; `why.products` weights are shares of the top persona's evidence, "
                  "`why.labelled_neighbours` counts distinct labelled co-buyers (HyperLogLog of precision "
                  "`publishing.neighbour_sketch_lg_k`: exact for small counts, about 3% off beyond at "
                  "the default 10), "
                  "`why.llm_evidence` holds a labelled customer's validated personas."),
    TableContract("product_personas", PRODUCT_PERSONAS, ("product_id", "persona"), "publishing",
                  "Per product and persona: affinity score."),
    TableContract("runs", RUNS, ("run_id",), "publishing",
                  "Written last by every run: its status and the version of every output table. "
                  "status: running, complete (readers pin only these), failed, abandoned (the job "
                  "was killed; marked by the next job), purged (an earlier run whose versions held "
                  "customers deleted since by `personas forget`)."),
    TableContract("tombstones", TOMBSTONES, ("customer_hash",), "forget",
                  "Forgotten customers: customer_hash = HMAC-SHA256(tombstone key, customer_id), "
                  "the key read from the variable named by forget.tombstone_key_env; ingestion and "
                  "labellers honour it."),
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
A mapped source (`ingest.source`, README "Run on your data") follows the same conventions:
its customer column must hold integer ids (text digits, integers, or integral floats), its
product column is trimmed and upper-cased, and its quantity may be fractional.

Landing files are read as RFC 4180 CSV (quoted fields may hold commas, quotes and line
breaks; a UTF-8 BOM is dropped); a record is one CSV record, and `line_number` the line it
starts on (the header is line 1). Quarantine reasons, tested in this order (a record gets
the first that applies): malformed_line (not valid CSV, not 8 fields, or a field longer
than the CSV field limit; `detail` says which), unparsable_value (Quantity, UnitPrice,
InvoiceDate or a non-empty CustomerID that does not parse, or a UnitPrice that is NaN or
infinite; CustomerID must be digits with an optional ".0", never a float such as "1e4";
`detail` names the field), out_of_range_value (InvoiceDate outside
`ingest.event_date_min`..`event_date_max`, or |UnitPrice| or |Quantity| above
`ingest.unit_price_max` / `ingest.quantity_max`), missing_customer, cancellation (InvoiceNo
starts with "C"), excluded_country (paper cut only), non_positive_quantity,
non_positive_price, non_product_code (POST, DOT, M, BANK CHARGES, AMAZONFEE, C2, PADS, D,
CRUK, S, B; default cut only), duplicate_line (identical in every field to an earlier
kept record of the same delivery, by file name then line, or the same purchase, equal in
every purchase_events column but the keys, as an event ingested by an earlier run; `detail`
names the first). The paper cut keeps
non-positive quantities and prices and non-product codes, as the paper did.

A mapped source's rows get the reasons unparsable_value (a required field missing or not
coercible: `detail` names the field and its source column), missing_customer,
out_of_range_value, non_positive_quantity, non_positive_price (when a price column is
mapped) and duplicate_line (equal in its key, or in every mapped column, to another row:
one of them is kept). Cancellation, excluded_country and non_product_code are rules of the
Online Retail files only.

The paper cut and the synthetic data use the same contracts in their own tables
(`paper_*`, `synth_*`).

Tables with a `customer_id` column are created with `delta.dataSkippingStatsColumns` naming
only their id-free columns (`persona_lib.storage.id_safe_properties`): Delta's log keeps no
statistic of `customer_id`, raw lines, LLM answers, details or why, so no id outlives a
deletion in the transaction log (README "Deletion").
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
