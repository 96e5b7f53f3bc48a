"""Typed configuration, loaded once from ``conf/*.yaml`` and passed down explicitly.

Tables (``tables:``): with ``catalog`` and ``schema`` every table is ``catalog.schema.<name>``;
without them a plain name (``purchase_events``) or a relative path is a Delta path under
``<workdir>/tables``. A table set to an absolute path or URI (``/mnt/x``, ``s3://b/x``,
``dbfs:/x``) or to a dotted ``catalog.schema.table`` (or ``schema.table``) is used as is. So
the same job runs locally and on Unity Catalog with only the config changed; the entry points
resolve them once into ``storage.Tables``.

A config file may name a ``base:`` file (relative to itself) whose values it overrides, so
``conf/test.yaml`` only states what differs from ``conf/local.yaml``.

Paths (the keys of ``PATH_KEYS``): a relative path written in a config file resolves against
that file's folder, each file of a ``base:`` chain against its own, and is absolute once
loaded. A default that no file sets (the work dir ``work``, the JARs ``.jars``, the bundled
taxonomy and data files) resolves against the repository root (``AppConfig.resolve_path``).
Command-line paths (``--workdir``, ``--landing``, ``--from-file``, ...) resolve against the
current directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from persona_lib.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "personas"
    # 0 means "2 x the cores Spark sees": enough parallelism without tiny-task overhead.
    shuffle_partitions: int = 0
    driver_memory: str = "4g"
    # Serial GC and C1-only JIT roughly halve JVM start-up, but run CPU-bound work 2-2.5x slower
    # (docs/scaling.md: a 4M-pair run's ingest 179 s against 107 s, its persona model 841 s against
    # 655 s), so only short-lived sessions (the tests: conf/test.yaml) turn them on.
    fast_jvm: bool = False
    ui_enabled: bool = False
    jars_dir: str = ".jars"
    # The JVM class-data archive scripts/setup.sh builds (persona_lib.class_archive): local
    # sessions map it when it exists and start in about half the time. null: never.
    class_archive: Optional[str] = ".jvm/spark-classes.jsa"
    extra_conf: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TablesConfig:
    """Where the tables live (``storage.resolve_tables`` turns this into ``storage.Tables``).

    ``catalog`` and ``schema`` (together): every table is ``catalog.schema.<name>``, its name
    with ``/`` read as ``_`` (``paper/purchase_events`` -> ``paper_purchase_events``). Neither:
    every table is a Delta path ``<workdir>/tables/<name>``. Either way a table whose name is
    set to an absolute path, a URI or a dotted catalog name is used as written."""

    catalog: Optional[str] = None
    schema: Optional[str] = None
    purchase_events: str = "purchase_events"
    products: str = "products"
    quarantine: str = "quarantine"
    ingest_log: str = "ingest_log"
    paper_purchase_events: str = "paper/purchase_events"
    paper_products: str = "paper/products"
    paper_quarantine: str = "paper/quarantine"
    paper_ingest_log: str = "paper/ingest_log"
    synth_purchase_events: str = "synth/purchase_events"
    synth_products: str = "synth/products"
    synth_truth: str = "synth/customer_truth"
    persona_labels: str = "persona_labels"
    product_labels: str = "product_labels"
    persona_overrides: str = "persona_overrides"
    recorded_answers: str = "recorded_answers"
    customer_affinity: str = "customer_affinity"
    product_affinity: str = "product_affinity"
    propagation_runs: str = "propagation_runs"
    persona_affinity: str = "persona_affinity"
    customer_personas: str = "customer_personas"
    product_personas: str = "product_personas"
    runs: str = "runs"
    tombstones: str = "tombstones"
    # personas evaluate: the last seed's predictions of an accuracy evaluation.
    evaluation_personas: str = "evaluation/customer_personas"


# The keys of TablesConfig that name a table (catalog and schema say where they all live).
TABLE_KEYS = tuple(f.name for f in dataclasses.fields(TablesConfig) if f.name not in ("catalog", "schema"))


@dataclass(frozen=True)
class SourceColumns:
    """Which source column holds each purchase_events field (null: the source has none).

    customer_id, product_id, quantity and event_ts are required; title may be a list of
    columns, joined by a space."""

    customer_id: Optional[str] = None
    product_id: Optional[str] = None
    quantity: Optional[str] = None
    event_ts: Optional[str] = None
    unit_price: Optional[str] = None
    basket_id: Optional[str] = None
    title: Union[str, tuple[str, ...], None] = None
    country: Optional[str] = None


@dataclass(frozen=True)
class IngestSourceConfig:
    """``ingest.source``: where purchases come from.

    ``uci_landing`` reads the bundled Online Retail landing CSV files (the folder
    ``ingest.landing``, or ``path`` when given) with their fixed columns; every other format
    reads a table through the ``columns`` mapping. Empty ``format``: no source configured, so
    ``personas run`` never ingests anything on its own."""

    format: str = ""  # uci_landing | delta | parquet | csv | table | query
    path: Optional[str] = None  # delta, parquet, csv (and uci_landing: the landing folder)
    table: Optional[str] = None  # table: a metastore / catalog table name
    query: Optional[str] = None  # query: Spark SQL
    columns: SourceColumns = field(default_factory=SourceColumns)
    # Source columns that identify a purchase (e.g. a line id); empty: all the mapped columns.
    key: tuple[str, ...] = ()
    # A string event_ts column is parsed with this Spark datetime pattern (null: ISO 8601).
    timestamp_format: Optional[str] = None
    # Reader options (csv: header, delimiter, ...); csv defaults to header=true.
    options: Mapping[str, str] = field(default_factory=dict)
    # What a run reads: "full" (the whole source; its rows gone from the source are deleted),
    # "watermark" (rows whose event_ts is after the newest ingested one less
    # watermark_lookback_hours, or has none: late rows inside the lookback still arrive) or
    # "change_feed" (delta and table sources: the Delta change data feed since the version the
    # last run read; deletes and updates upstream are applied). Incremental runs never delete a
    # row for being absent from what they read.
    incremental: str = "full"
    watermark_lookback_hours: float = 24.0


@dataclass(frozen=True)
class ProductColumns:
    product_id: Optional[str] = None
    title: Union[str, tuple[str, ...], None] = None
    group: Optional[str] = None


@dataclass(frozen=True)
class ProductCatalogConfig:
    """``ingest.products``: an optional product catalogue (titles for the products table)."""

    format: str = ""  # empty: no catalogue; else delta | parquet | csv | table | query
    path: Optional[str] = None
    table: Optional[str] = None
    query: Optional[str] = None
    columns: ProductColumns = field(default_factory=ProductColumns)
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestConfig:
    source: IngestSourceConfig = field(default_factory=IngestSourceConfig)
    products: ProductCatalogConfig = field(default_factory=ProductCatalogConfig)
    # The landing folder of format uci_landing (the key before ingest.source existed).
    landing: str = "data/online_retail/landing"
    file_glob: str = "*.csv*"
    non_product_codes: tuple[str, ...] = (
        "POST", "DOT", "M", "BANK CHARGES", "AMAZONFEE", "C2", "PADS", "D", "CRUK", "S", "B",
    )
    timestamp_format: str = "yyyy-MM-dd HH:mm:ss"
    # A changed file under a name already ingested: "reject" records it as
    # conflicting_redelivery and writes nothing of it; "replace" swaps that name's rows for
    # the new content's in one commit per table.
    on_changed_file: str = "reject"
    # Events dated outside [min, max] (ISO dates, both inclusive) are quarantined as
    # out_of_range_value: a year 9999 or 0001 is a broken export, not a purchase.
    event_date_min: str = "1990-01-01"
    event_date_max: str = "2099-12-31"
    # Bounds on |UnitPrice| and |Quantity|; beyond them a line is out_of_range_value.
    unit_price_max: float = 1_000_000.0
    quantity_max: int = 1_000_000
    # The GPLR paper's OnlineRetail cut (data/gplr_online_retail/README.md).
    paper_excluded_countries: tuple[str, ...] = (
        "Canada", "Channel Islands", "Cyprus", "Czech Republic", "Denmark", "EIRE",
        "European Community", "Finland",
    )


@dataclass(frozen=True)
class SynthConfig:
    customers: int = 20_000
    products: int = 5_000
    events: int = 400_000
    personas: int = 20
    personas_per_customer_max: int = 3
    zipf_exponent: float = 1.0
    # Share of a customer's events drawn outside its planted personas.
    noise: float = 0.2
    seed: int = 7
    start: str = "2024-01-01"
    days: int = 365


@dataclass(frozen=True)
class GraphConfig:
    """How purchases become the customer-product graph's edge weights (``graph.edges_from_events``)."""

    edge_weighting: str = "none"  # none | count | recency
    half_life_days: float = 90.0  # recency: an edge's weight halves every this many days
    # The graph's product vertices: "product" (one per product_id, the paper's graph) or
    # "group" (one per products.product_group, the catalogue's group: a coarser key for a
    # sparse catalogue, where few customers share any one SKU). Products without a group stay
    # their own vertex; product_affinity is still written per product (its group's affinity).
    product_key: str = "product"


@dataclass(frozen=True)
class PropagationConfig:
    lhat: int = 1
    beta: float = 0.5
    # Absolute error bound. Null: derived from the affinity scale (epsilon_relative x the
    # mean affinity of a customer and persona, see propagation.default_epsilon).
    epsilon: Optional[float] = None
    # 0.01: the persona model carries the bound into an interval of each published
    # probability (is_ambiguous); at 0.25 that interval straddled some threshold for 98% of
    # the customers, at 0.01 for about 10% (measured on the bundled run). Ranking alone
    # needs far less (0.25 kept top-5 agreement >= 99.5%, bench/propagation.md).
    epsilon_relative: float = 0.01
    method: str = "revaff"  # revaff | exact
    max_supersteps: int = 64
    # Every this many layers a layer is checkpointed (0: never) so lineage stays short.
    checkpoint_interval: int = 2
    checkpoint_storage: str = "local"  # local (localCheckpoint) | reliable (checkpoint dir)
    # Broadcast a product layer (<= products x personas entries) instead of shuffling edges.
    broadcast_product_layer: bool = True
    missing_label_policy: str = "skip"  # skip | error


@dataclass(frozen=True)
class VllmConfig:
    model_path: str = ""
    dtype: str = "auto"
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 160
    num_workers: int = 1
    batch_size: int = 256
    enforce_eager: bool = False
    cpu_kvcache_gib: int = 1
    # Every request shares the prompt prefix (instructions + persona list): cache it.
    enable_prefix_caching: bool = True
    # The structured-output backend, set on the engine (vLLM ignores it per request).
    structured_outputs_backend: str = "xgrammar"


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 0.5
    max_tokens: int = 160
    temperature: float = 0.0
    seed: Optional[int] = 0
    # How the JSON schema is sent: "response_format" (OpenAI's json_schema, also understood
    # by vLLM) or "structured_outputs" (vLLM's own request field).
    structured_output_field: str = "response_format"


@dataclass(frozen=True)
class ProductLabellingConfig:
    """The optional product-title stage: the same labeller asked about products, not customers."""

    enabled: bool = False
    # popular: the budget's most-bought products (by distinct buyers); all: every titled
    # product, budget ignored.
    selection: str = "popular"  # popular | all
    budget: float = 0.2  # a fraction of the titled products (<= 1) or a count (> 1)
    # Personas one product answer may hold (the paper's prompt said 5; the authors' recorded
    # product labels hold 1 to 5).
    max_personas: int = 5
    # The replay labeller's recorded product answers, matched by normalised title.
    replay_answers: str = "data/gplr_online_retail/item_labels.csv.gz"


@dataclass(frozen=True)
class LabellingConfig:
    labeller: str = "replay"  # replay | vllm | openai | manual
    taxonomy: str = "conf/personas/online_retail.yaml"
    replay_answers: str = "data/gplr_online_retail/user_labels.csv.gz"
    replay_model: str = "gpt-4-turbo"
    # The replay backend of `personas taxonomy propose`: a recorded persona-set answer.
    replay_proposal: str = "data/gplr_online_retail/taxonomy_proposal.yaml"
    prompt_token_budget: int = 1500
    max_failure_rate: float = 0.05
    vllm: VllmConfig = field(default_factory=VllmConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    products: ProductLabellingConfig = field(default_factory=ProductLabellingConfig)


@dataclass(frozen=True)
class SamplingConfig:
    budget: float = 0.2  # 0: no LLM sampling; < 1: a fraction of customers; >= 1: a whole count
    rounds: int = 2
    seed: int = 42


@dataclass(frozen=True)
class PublishingConfig:
    top_k: int = 5
    # Evidence mass below this (sum of raw scores) marks a customer ambiguous.
    evidence_floor: float = 0.0
    why_products: int = 5
    # HyperLogLog lgConfigK of why.labelled_neighbours (4..21): relative error about
    # 1.04 / sqrt(2^k) above small counts, and the per-customer union's cost grows with 2^k
    # (bench/labelled_neighbours.py measures both).
    neighbour_sketch_lg_k: int = 10
    # The per-product sketches are broadcast to the edges' tasks up to this size (MiB); beyond,
    # they are joined by product (a shuffle of every edge with its sketch). 0: always joined.
    neighbour_sketch_broadcast_mib: int = 64


@dataclass(frozen=True)
class ModelConfig:
    """The persona model (persona_lib.persona_model) fitted on the labelled customers every run."""

    # Folds of the labelled customers: each fold's features come from the other folds only.
    cv_folds: int = 5
    # Inverse L2 strength of the purchase-profile logistic (per labelled customer and persona).
    profile_c: float = 3.0
    # L2 strength (mean loss) of the stacking logistic over the features.
    stack_reg: float = 1e-3
    # Each persona's threshold maximises its F1 on the out-of-fold customers subject to
    # |published share - labelled share| <= this.
    max_prevalence_gap: float = 0.03
    # Fewer distinct products than this is thin evidence: the customer is flagged ambiguous.
    min_products: int = 2
    # L-BFGS iterations of each profile fit (the stacking fit gets twice as many).
    max_iter: int = 100


@dataclass(frozen=True)
class TrackingConfig:
    # Null: sqlite under the work dir, so it works offline.
    tracking_uri: Optional[str] = None
    experiment: str = "personas"
    # A plain name in the local registry; on Unity Catalog a three-level catalog.schema.model.
    registered_model: str = "personas_cold_start"
    # Null: Unity Catalog ("databricks-uc") when tracking to Databricks, else the tracking store.
    registry_uri: Optional[str] = None


@dataclass(frozen=True)
class QueryConfig:
    rerank_weight: float = 0.3
    cold_start_min_products: int = 1


@dataclass(frozen=True)
class ServingConfig:
    """``personas serve``: the decision-time HTTP service over the latest complete run."""

    # Loopback by default: exposing the service is a deliberate choice (and wants api_key_env).
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # Name of an environment variable holding the API key; when it is set, every request
    # must carry it in X-API-Key (401 otherwise). Null: no key checked.
    api_key_env: Optional[str] = None
    # How often the watcher looks for a new complete run and new tombstones; a forgotten
    # customer stops being served within about this long (the promise is 5 s).
    poll_seconds: float = 1.0
    max_body_bytes: int = 65536


@dataclass(frozen=True)
class ForgetConfig:
    vacuum_retention_hours: int = 168
    disable_retention_check: bool = False
    # Tombstones are HMAC-SHA256(key, customer_id); the key is read from this environment
    # variable (a secret), never from a config file in production.
    tombstone_key_env: str = "PERSONAS_TOMBSTONE_KEY"
    # Used only when that variable is unset: a public key for the bundled demo and the tests
    # (conf/local.yaml, conf/test.yaml). Empty in production configs, so a missing secret
    # is an error instead of a silently weak key.
    demo_key: str = ""


@dataclass(frozen=True)
class LockConfig:
    """The writer lock: one writing job per work dir (README "Guarantees")."""

    # A lease not renewed for this long is stale and may be taken over (a killed job).
    lease_s: float = 120.0
    # How often the holder renews its lease.
    heartbeat_s: float = 15.0
    # How often a job started with --wait looks again.
    poll_s: float = 2.0


@dataclass(frozen=True)
class EvaluationConfig:
    # The vendored GPLR OnlineRetail files (labels, split, product labels, authors' outputs).
    data_dir: str = "data/gplr_online_retail"
    # Budgets as fractions of the customers (strings: the loader keeps list items as text).
    budgets: tuple[str, ...] = ("0.05", "0.1", "0.2", "0.3")
    samplers: tuple[str, ...] = ("random", "du")
    seeds: int = 3
    # Recommendation: ALS (implicit) on split_train, metrics on split_test. The ALS settings
    # are the best NDCG@10 of a grid (rank 32-128, reg 0.02-0.05, alpha 3-10) on a 20%
    # validation split carved from split_train, never on split_test (bench/als_grid.py).
    ks: tuple[str, ...] = ("2", "5", "10", "20", "50", "100")
    als_rank: int = 128
    als_iterations: int = 15
    als_reg: float = 0.05
    als_alpha: float = 3.0
    # Share of each customer's TRAIN items held out to choose the persona blend weight.
    validation_fraction: float = 0.2
    blend_weights: tuple[str, ...] = ("0.0", "0.05", "0.1", "0.2", "0.3", "0.5")
    recommend_budget: float = 0.2
    # Segmentation stability: customers with more distinct invoices than this in the year.
    stability_min_invoices: int = 10
    stability_clusters: int = 10
    experiment: str = "personas-evaluation"


@dataclass(frozen=True)
class AppConfig:
    workdir: str = "work"
    spark: SparkConfig = field(default_factory=SparkConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    labelling: LabellingConfig = field(default_factory=LabellingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    publishing: PublishingConfig = field(default_factory=PublishingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # What MLflow runs are named after; empty: the config file's name (local, databricks).
    name: str = ""

    @property
    def workdir_path(self) -> Path:
        return self.resolve_path(self.workdir)

    def resolve_path(self, path: str) -> Path:
        """A path from the config: absolute as given (what a config file wrote is absolute
        once loaded); a default no file set is relative to the repository root."""
        candidate = Path(os.path.expanduser(path))
        return candidate if candidate.is_absolute() else REPO_ROOT / candidate

    def with_workdir(self, workdir: str | os.PathLike[str]) -> "AppConfig":
        return dataclasses.replace(self, workdir=str(Path(workdir).resolve()))

    def replace(self, section: str, **changes: Any) -> "AppConfig":
        """A copy with fields of one section changed, e.g. ``replace("sampling", budget=0.1)``."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **changes)})


DEFAULT_CONFIG_PATH = REPO_ROOT / "conf" / "local.yaml"


def load_config(path: str | os.PathLike[str] | None = None, workdir: str | None = None,
                catalog: str | None = None, schema: str | None = None) -> AppConfig:
    """Load and validate a YAML config; unknown keys and wrong types are errors that name the key.

    ``catalog`` and ``schema`` (together) move every table, volume path and the registered
    model into that Unity Catalog schema (``with_catalog_schema``).
    """
    config_path = Path(path) if path else DEFAULT_CONFIG_PATH
    raw = _legacy_landing_source(_read_with_bases(config_path, seen=()))
    if "base_dir" in raw:
        raise ConfigError(f"{config_path}: base_dir is no longer a key: a relative path in a config "
                          "file resolves against that file's folder (write paths relative to it, or "
                          "absolute)")
    config = _build(AppConfig, raw, where=str(config_path))
    validate(config, where=str(config_path))
    if not config.name:
        config = dataclasses.replace(config, name=config_path.stem)
    if catalog is not None or schema is not None:
        config = with_catalog_schema(config, catalog, schema)
    if workdir:
        config = config.with_workdir(workdir)
    return config


def _legacy_landing_source(raw: dict[str, Any]) -> dict[str, Any]:
    """A config that names ``ingest.landing`` and no ``ingest.source.format`` (written before
    ingest.source existed) reads the landing folder: ``format: uci_landing``. ``format: ""``
    says there is no source."""
    ingest = raw.get("ingest")
    if not isinstance(ingest, dict) or "landing" not in ingest:
        return raw
    source = ingest.get("source")
    if source is None:
        source = {}
    if not isinstance(source, dict) or "format" in source:
        return raw
    return {**raw, "ingest": {**ingest, "source": {**source, "format": "uci_landing"}}}


_UC_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def catalog_schema_problem(catalog: Optional[str], schema: Optional[str]) -> Optional[str]:
    """What is wrong with a --catalog/--schema pair, or None (both absent is fine)."""
    if catalog is None and schema is None:
        return None
    if not catalog or not schema:
        return f"--catalog and --schema go together: give both or neither (got {catalog!r}, {schema!r})"
    for option, value in (("--catalog", catalog), ("--schema", schema)):
        if not _UC_IDENTIFIER.match(value):
            return f"{option} {value!r} is not a Unity Catalog name (letters, digits and _)"
    return None


def is_explicit_table(name: str) -> bool:
    """Whether a table name says where the table is by itself (an absolute path, a URI or a
    dotted catalog name), so that no catalog, schema or work dir applies to it."""
    return bool(_URI_PREFIX.match(name)) or ("/" not in name and "." in name)


def catalog_table_name(name: str) -> str:
    """The name a configured table takes in a catalog schema: a relative path's parts joined
    by ``_`` (``paper/purchase_events`` -> ``paper_purchase_events``), a dotted name's last
    part, an absolute path's or URI's last part."""
    if "/" not in name:
        return name.split(".")[-1]
    if _URI_PREFIX.match(name):
        return name.rstrip("/").rsplit("/", 1)[-1]
    return name.strip("/").replace("/", "_")


def with_catalog_schema(config: AppConfig, catalog: Optional[str], schema: Optional[str]) -> AppConfig:
    """The config with its data in ``catalog.schema``: one bundle target per schema.

    Every table becomes ``catalog.schema.<name>`` (``catalog_table_name``), those the config
    placed explicitly too. Paths on a volume (``/Volumes/<catalog>/<schema>/<volume>/...``)
    move to the same schema, and a three-level registered model name too.
    """
    problem = catalog_schema_problem(catalog, schema)
    if problem or not catalog or not schema:
        raise ConfigError(problem or "with_catalog_schema needs a catalog and a schema")
    # Explicitly placed tables join the others (by their last name part); two tables landing
    # on one name are reported by the check below.
    tables = {}
    for key in TABLE_KEYS:
        name = getattr(config.tables, key)
        tables[key] = catalog_table_name(name) if is_explicit_table(name) else name

    def on_volume(path: str) -> str:
        parts = path.split("/")
        if path.startswith("/Volumes/") and len(parts) >= 5:
            return "/".join(["", "Volumes", catalog, schema, *parts[4:]])
        return path

    model = config.tracking.registered_model
    if model.count(".") == 2:
        model = f"{catalog}.{schema}.{model.split('.')[-1]}"
    moved_config = dataclasses.replace(
        config,
        tables=dataclasses.replace(config.tables, catalog=catalog, schema=schema, **tables),
        tracking=dataclasses.replace(config.tracking, registered_model=model),
    )
    for key in PATH_KEYS:
        path = config_value(moved_config, key)
        if path:
            moved_config = with_value(moved_config, key, on_volume(path))
    # A path name that was fine under the work dir may not be a catalog name (a '-'), and two
    # tables may now land on one name.
    problems = _tables_problems(moved_config.tables)
    if problems:
        raise ConfigError(f"--catalog {catalog} --schema {schema}: " + "; ".join(problems))
    return moved_config


# Every key whose value is a file or folder on disk (or a URI). A relative value written in a
# config file resolves against that file's folder when it is loaded; --catalog/--schema move
# the /Volumes paths among them.
PATH_KEYS = (
    "workdir",
    "spark.jars_dir",
    "spark.class_archive",
    "ingest.landing",
    "ingest.source.path",
    "ingest.products.path",
    "labelling.taxonomy",
    "labelling.replay_answers",
    "labelling.replay_proposal",
    "labelling.products.replay_answers",
    "labelling.vllm.model_path",
    "evaluation.data_dir",
)

# A value with a scheme (s3://, abfss://, dbfs:/, file:/) is storage Spark reads, never a
# path of ours to anchor.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def config_value(config: Any, key: str) -> Any:
    """The value of a dotted key (``labelling.taxonomy``) of a config."""
    for part in key.split("."):
        config = getattr(config, part)
    return config


def with_value(config: Any, key: str, value: Any) -> Any:
    """A copy of ``config`` with the dotted ``key`` set to ``value``."""
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: with_value(getattr(config, head), rest, value)})


def existing_path(config: AppConfig, key: str) -> Path:
    """The resolved path of a path key, which must exist (a ConfigError names both)."""
    path = config.resolve_path(config_value(config, key))
    if not path.exists():
        raise ConfigError(f"{key}: {path} not found")
    return path


def _anchor_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``data`` (one file's sections) with its relative path values made absolute against
    ``folder``, the file's own folder. Values of the wrong type are left for ``_build`` to
    report."""
    for key in PATH_KEYS:
        *sections, leaf = key.split(".")
        section = data
        for name in sections:
            section = section.get(name) if isinstance(section, dict) else None
        if not isinstance(section, dict) or not isinstance(section.get(leaf), str):
            continue
        value = section[leaf]
        if not value or _SCHEME.match(value):
            continue
        expanded = Path(os.path.expanduser(value))
        if not expanded.is_absolute():
            expanded = Path(os.path.normpath(folder / expanded))
        section[leaf] = str(expanded)
    return data


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base_name = data.pop("base", None)
    data = _anchor_paths(data, path.parent)
    if base_name is None:
        return data
    base = _read_with_bases(path.parent / base_name, seen + (path,))
    return _deep_merge(base, data)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{where}: {name}")
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        # str | tuple (a column or a list of columns): a list takes the tuple.
        if isinstance(value, (list, tuple)):
            args = [a for a in args if typing.get_origin(a) is tuple] or args
        return _coerce(args[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(str(v) for v in value)
    if origin in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


# ------------------------------------------------------------------ value checks
# Everything here runs before Spark starts, so a bad config costs no JVM start and writes
# nothing (exit code 3).

# The values of each enumerated setting, in one place: validation checks against them and the
# command line derives its ``choices`` from them.
LABELLERS = ("replay", "vllm", "openai", "manual")
ON_CHANGED_FILE = ("reject", "replace")
CUTS = ("default", "paper")
SOURCE_FORMATS = ("uci_landing", "delta", "parquet", "csv", "table", "query")
INCREMENTAL_MODES = ("full", "watermark", "change_feed")
# The formats whose Delta change data feed a change_feed source reads.
CHANGE_FEED_FORMATS = ("delta", "table")
CATALOG_FORMATS = ("delta", "parquet", "csv", "table", "query")
# Where each format finds its data: the key of ingest.source (or ingest.products) it needs.
FORMAT_LOCATION = {"delta": "path", "parquet": "path", "csv": "path", "table": "table", "query": "query"}
REQUIRED_SOURCE_COLUMNS = ("customer_id", "product_id", "quantity", "event_ts")
PROPAGATION_METHODS = ("revaff", "exact")
EDGE_WEIGHTINGS = ("none", "count", "recency")
PRODUCT_KEYS = ("product", "group")
SAMPLERS = ("random", "du")

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_CATALOG_TABLE = re.compile(rf"^{_IDENTIFIER}(\.{_IDENTIFIER}){{1,2}}$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]*$")
_URI_PREFIX = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|dbfs:|/)")


def table_name_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a usable table name (None when it is).

    Three forms: ``catalog.schema.table`` (identifiers only: they reach SQL text), an absolute
    path or URI, or a relative path under the work dir; paths may not climb out (``..``) nor
    hold quotes, backticks, whitespace or control characters (they reach SQL as
    delta.`path`)."""
    if not name:
        return "it is empty"
    if any(ch in name for ch in "`'\";\\") or any(ch.isspace() or ord(ch) < 32 for ch in name):
        return "it holds a quote, backtick, semicolon, backslash, whitespace or control character"
    if _URI_PREFIX.match(name):
        path = re.sub(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://[^/]*|dbfs:)", "", name)
        if ".." in path.split("/"):
            return "it climbs out of its folder ('..')"
        return None
    if "/" not in name and "." in name:
        if not _CATALOG_TABLE.match(name):
            return ("a dotted name is a catalog table and each of its 2 or 3 parts must be an "
                    "identifier (letters, digits, underscore; not starting with a digit)")
        return None
    segments = name.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "a relative table path may not have empty, '.' or '..' segments"
    bad = [s for s in segments if not _PATH_SEGMENT.match(s)]
    if bad:
        return f"path segment {bad[0]!r} is not letters, digits, '_', '-', '.' or '='"
    return None


def validate(config: AppConfig, where: str = "config") -> None:
    """Checks of values (types are checked while loading); each error names the key."""
    problems = []
    problems += _tables_problems(config.tables)
    ingest = config.ingest
    if ingest.on_changed_file not in ON_CHANGED_FILE:
        problems.append(f"ingest.on_changed_file: {ingest.on_changed_file!r}; expected one of {list(ON_CHANGED_FILE)}")
    dates = {}
    for key in ("event_date_min", "event_date_max"):
        try:
            dates[key] = dt.date.fromisoformat(getattr(ingest, key))
        except ValueError:
            problems.append(f"ingest.{key}: {getattr(ingest, key)!r} is not an ISO date (YYYY-MM-DD)")
    if len(dates) == 2 and dates["event_date_min"] > dates["event_date_max"]:
        problems.append("ingest.event_date_min is after ingest.event_date_max")
    if not ingest.unit_price_max > 0:
        problems.append(f"ingest.unit_price_max must be positive, got {ingest.unit_price_max}")
    if ingest.quantity_max <= 0:
        problems.append(f"ingest.quantity_max must be positive, got {ingest.quantity_max}")
    problems += _source_problems(ingest)
    graph = config.graph
    if graph.edge_weighting not in EDGE_WEIGHTINGS:
        problems.append(f"graph.edge_weighting: {graph.edge_weighting!r}; expected one of {list(EDGE_WEIGHTINGS)}")
    if graph.product_key not in PRODUCT_KEYS:
        problems.append(f"graph.product_key: {graph.product_key!r}; expected one of {list(PRODUCT_KEYS)}")
    if not graph.half_life_days > 0:
        problems.append(f"graph.half_life_days must be positive, got {graph.half_life_days}")
    problems += _labelling_problems(config)
    if config.publishing.neighbour_sketch_broadcast_mib < 0:
        problems.append("publishing.neighbour_sketch_broadcast_mib must be >= 0, "
                        f"got {config.publishing.neighbour_sketch_broadcast_mib}")
    if not 4 <= config.publishing.neighbour_sketch_lg_k <= 21:
        problems.append("publishing.neighbour_sketch_lg_k must be within 4..21 (HyperLogLog lgConfigK), "
                        f"got {config.publishing.neighbour_sketch_lg_k}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))


def _tables_problems(tables: TablesConfig) -> list[str]:
    problems = []
    for table_key in TABLE_KEYS:
        name = getattr(tables, table_key)
        problem = table_name_problem(name)
        if problem:
            problems.append(f"tables.{table_key}: {name!r} is not a valid table name: {problem}")
    if tables.catalog is None and tables.schema is None:
        return problems
    if not tables.catalog or not tables.schema:
        return problems + [f"tables.catalog and tables.schema go together: give both or neither "
                           f"(got {tables.catalog!r}, {tables.schema!r})"]
    for key in ("catalog", "schema"):
        if not _UC_IDENTIFIER.match(getattr(tables, key)):
            problems.append(f"tables.{key}: {getattr(tables, key)!r} is not a Unity Catalog name "
                            "(letters, digits and _)")
    in_schema: dict[str, str] = {}
    for table_key in TABLE_KEYS:
        name = getattr(tables, table_key)
        if is_explicit_table(name) or table_name_problem(name):
            continue
        leaf = catalog_table_name(name)
        if not _UC_IDENTIFIER.match(leaf):
            problems.append(f"tables.{table_key}: {name!r} would be the catalog table {leaf!r}, "
                            "which is not a Unity Catalog name (letters, digits and _)")
        elif leaf in in_schema:
            problems.append(f"tables.{table_key} and tables.{in_schema[leaf]} would both be "
                            f"{tables.catalog}.{tables.schema}.{leaf}")
        in_schema.setdefault(leaf, table_key)
    return problems


def _source_problems(ingest: IngestConfig) -> list[str]:
    problems = []
    source = ingest.source
    if source.format and source.format not in SOURCE_FORMATS:
        problems.append(f"ingest.source.format: {source.format!r}; expected one of {list(SOURCE_FORMATS)}")
    elif source.format and source.format != "uci_landing":
        location = FORMAT_LOCATION[source.format]
        if not getattr(source, location):
            problems.append(f"ingest.source.{location} is required by format {source.format!r}")
        unmapped = [c for c in REQUIRED_SOURCE_COLUMNS if not getattr(source.columns, c)]
        if unmapped:
            problems.append(f"ingest.source.columns: {', '.join(unmapped)} must name a source column "
                            f"(required: {', '.join(REQUIRED_SOURCE_COLUMNS)})")
        if source.incremental not in INCREMENTAL_MODES:
            problems.append(f"ingest.source.incremental: {source.incremental!r}; expected one of "
                            f"{list(INCREMENTAL_MODES)}")
        elif source.incremental == "change_feed" and source.format not in CHANGE_FEED_FORMATS:
            problems.append(f"ingest.source.incremental: change_feed reads a Delta change data feed, so the "
                            f"format must be one of {list(CHANGE_FEED_FORMATS)}, not {source.format!r}")
        if not source.watermark_lookback_hours >= 0:
            problems.append("ingest.source.watermark_lookback_hours must be >= 0, got "
                            f"{source.watermark_lookback_hours}")
    catalog = ingest.products
    if catalog.format:
        if catalog.format not in CATALOG_FORMATS:
            problems.append(f"ingest.products.format: {catalog.format!r}; expected one of {list(CATALOG_FORMATS)}")
        else:
            location = FORMAT_LOCATION[catalog.format]
            if not getattr(catalog, location):
                problems.append(f"ingest.products.{location} is required by format {catalog.format!r}")
            if not catalog.columns.product_id:
                problems.append("ingest.products.columns.product_id must name a catalogue column")
    return problems


def _column_names(mapped: Union[str, tuple[str, ...], None]) -> tuple[str, ...]:
    if mapped is None:
        return ()
    return (mapped,) if isinstance(mapped, str) else tuple(mapped)


def budget_problem(budget: float, key: str = "sampling.budget",
                   what: str = "customers") -> Optional[str]:
    """Why ``budget`` is not a budget, or None."""
    if budget != budget or budget in (float("inf"), float("-inf")) or budget < 0:
        return (f"{key} must be 0 (no LLM sampling), a fraction below 1 or a whole count of "
                f"{what}, got {budget}")
    if budget >= 1 and float(budget) != int(budget):
        return f"{key} of 1 or more is a count of {what} and must be whole, got {budget}"
    return None


def _labelling_problems(config: AppConfig) -> list[str]:
    problems = []
    if config.labelling.labeller not in LABELLERS:
        problems.append(f"labelling.labeller: unknown labeller {config.labelling.labeller!r}; "
                        f"known: {', '.join(LABELLERS)}")
    budget_error = budget_problem(config.sampling.budget)
    if budget_error:
        problems.append(budget_error)
    if config.sampling.rounds < 1:
        problems.append(f"sampling.rounds must be at least 1, got {config.sampling.rounds}")
    return problems


def validate_for_labelling(config: AppConfig) -> None:
    """What a labelling command needs, checked before Spark starts: the labeller, the budget
    (after command-line overrides) and a taxonomy file that loads and validates."""
    problems = _labelling_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))
    from persona_lib.taxonomy import load_taxonomy  # yaml only, no Spark

    load_taxonomy(existing_path(config, "labelling.taxonomy"))
