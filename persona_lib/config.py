"""Typed configuration, loaded once from ``conf/*.yaml`` and passed down explicitly.

Every table is a *name*: a plain name (``purchase_events``) or a relative path resolves to
a Delta path under ``<workdir>/tables``; an absolute path or URI (``/mnt/x``, ``s3://b/x``,
``dbfs:/x``) is used as is; a dotted ``catalog.schema.table`` (or ``schema.table``) is a
metastore / Unity Catalog table. So the same job runs locally and on Unity Catalog with only
the config changed.

A config file may name a ``base:`` file (relative to itself) whose values it overrides, so
``conf/test.yaml`` only states what differs from ``conf/local.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

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
    # Start-up and small-job speed: serial GC and C1-only JIT roughly halve JVM start here.
    fast_jvm: bool = True
    ui_enabled: bool = False
    jars_dir: str = ".jars"
    extra_conf: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TablesConfig:
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


@dataclass(frozen=True)
class IngestConfig:
    landing: str = "data/online_retail/landing"
    file_glob: str = "*.csv*"
    non_product_codes: tuple[str, ...] = (
        "POST", "DOT", "M", "BANK CHARGES", "AMAZONFEE", "C2", "PADS", "D", "CRUK", "S", "B",
    )
    timestamp_format: str = "yyyy-MM-dd HH:mm:ss"
    # The GPLR paper's OnlineRetail cut (shared/data/gplr_online_retail/README.md).
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
class PropagationConfig:
    lhat: int = 1
    beta: float = 0.5
    # Absolute error bound. Null: derived from the affinity scale (epsilon_relative x the
    # mean affinity of a customer and persona, see propagation.default_epsilon).
    epsilon: Optional[float] = None
    epsilon_relative: float = 0.25
    method: str = "revaff"  # revaff | exact
    max_supersteps: int = 64
    # Every this many layers a layer is checkpointed (0: never) so lineage stays short.
    checkpoint_interval: int = 2
    checkpoint_storage: str = "local"  # local (localCheckpoint) | reliable (checkpoint dir)
    # Broadcast a product layer (<= products x personas entries) instead of shuffling edges.
    broadcast_product_layer: bool = True
    edge_weighting: str = "none"  # none | count | recency
    half_life_days: float = 90.0
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
class LabellingConfig:
    labeller: str = "replay"  # replay | vllm | openai | manual
    taxonomy: str = "conf/personas/online_retail.yaml"
    replay_answers: str = "data/gplr_online_retail/user_labels.csv.gz"
    replay_model: str = "gpt-4-turbo"
    prompt_token_budget: int = 1500
    max_failure_rate: float = 0.05
    vllm: VllmConfig = field(default_factory=VllmConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)


@dataclass(frozen=True)
class SamplingConfig:
    budget: float = 0.2  # a fraction of customers (<= 1) or a count (> 1)
    rounds: int = 2
    seed: int = 42
    stratify_by_activity: bool = False


@dataclass(frozen=True)
class PublishingConfig:
    top_k: int = 5
    # Evidence mass below this (sum of raw scores) marks a customer ambiguous.
    evidence_floor: float = 0.0
    why_products: int = 5


@dataclass(frozen=True)
class TrackingConfig:
    # Null: sqlite under the work dir, so it works offline.
    tracking_uri: Optional[str] = None
    experiment: str = "personas"
    registered_model: str = "personas_cold_start"


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


@dataclass(frozen=True)
class EvaluationConfig:
    # The vendored GPLR OnlineRetail files (labels, split, product labels, authors' outputs).
    data_dir: str = "data/gplr_online_retail"
    # Budgets as fractions of the customers (strings: the loader keeps list items as text).
    budgets: tuple[str, ...] = ("0.05", "0.1", "0.2", "0.3")
    samplers: tuple[str, ...] = ("random", "du")
    seeds: int = 3
    # Folds of the labelled customers for the learned persona choice: each fold's walk
    # features come from a propagation of the OTHER folds' labels only.
    cv_folds: int = 5
    # Probability thresholds tried for "persona in or out" (the best on the labelled wins).
    thresholds: tuple[str, ...] = ("0.25", "0.3", "0.35", "0.4", "0.45", "0.5")
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
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    labelling: LabellingConfig = field(default_factory=LabellingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    publishing: PublishingConfig = field(default_factory=PublishingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # Where relative paths in this config resolve (the repository root by default).
    base_dir: str = str(REPO_ROOT)

    @property
    def workdir_path(self) -> Path:
        return self.resolve_path(self.workdir)

    def resolve_path(self, path: str) -> Path:
        """A path from the config: absolute as given, relative to ``base_dir`` otherwise."""
        candidate = Path(os.path.expanduser(path))
        return candidate if candidate.is_absolute() else Path(self.base_dir) / candidate

    def with_workdir(self, workdir: str | os.PathLike[str]) -> "AppConfig":
        return dataclasses.replace(self, workdir=str(Path(workdir).resolve()))

    def replace(self, section: str, **changes: Any) -> "AppConfig":
        """A copy with fields of one section changed, e.g. ``replace("sampling", budget=0.1)``."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **changes)})


DEFAULT_CONFIG_PATH = REPO_ROOT / "conf" / "local.yaml"


def load_config(path: str | os.PathLike[str] | None = None, workdir: str | None = None) -> AppConfig:
    """Load and validate a YAML config; unknown keys and wrong types are errors that name the key."""
    config_path = Path(path) if path else DEFAULT_CONFIG_PATH
    raw = _read_with_bases(config_path, seen=())
    config = _build(AppConfig, raw, where=str(config_path))
    if "base_dir" not in raw:
        config = dataclasses.replace(config, base_dir=str(REPO_ROOT))
    if workdir:
        config = config.with_workdir(workdir)
    return config


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
