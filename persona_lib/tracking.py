"""MLflow: one run per pipeline run (nested runs per round), its inputs as datasets with their
Delta versions, its outputs as tags, its charts and samples as artifacts, and the cold-start
model logged and registered with an alias per run.

The default store is sqlite under the work dir, so tracking works offline and two work dirs
never share a store; ``tracking.tracking_uri`` in the config points it at Databricks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from persona_lib.config import REPO_ROOT, AppConfig
from persona_lib.errors import ConfigError

log = logging.getLogger("personas.tracking")


def tracking_uri(config: AppConfig) -> str:
    if config.tracking.tracking_uri:
        return config.tracking.tracking_uri
    return f"sqlite:///{config.workdir_path / 'mlflow.db'}"


def registry_uri(config: AppConfig) -> str:
    """Where models are registered: Unity Catalog when tracking to Databricks (the legacy
    workspace registry is disabled on UC accounts), else the tracking store itself."""
    if config.tracking.registry_uri:
        return config.tracking.registry_uri
    uri = tracking_uri(config)
    if uri == "databricks" or uri.startswith("databricks://"):
        return "databricks-uc" + uri[len("databricks"):]  # keeps a profile: databricks-uc://PROFILE
    return uri


def registered_model_name(config: AppConfig) -> str:
    """The model's registry name, checked against the registry: UC needs catalog.schema.model."""
    name = config.tracking.registered_model
    if registry_uri(config).startswith("databricks-uc") and (
            name.count(".") != 2 or not all(name.split("."))):
        raise ConfigError(f"tracking.registered_model = {name!r}: the Unity Catalog registry needs a "
                          "three-level name, catalog.schema.model")
    return name


def run_name(config: AppConfig, kind: str = "", started_at: Optional[datetime] = None) -> str:
    """``<config name>[-<kind>]-<UTC date and time>``, e.g. ``databricks-2026-11-30T0305Z``."""
    when = (started_at or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H%MZ")
    return "-".join(part for part in (config.name or "personas", kind, when) if part)


def configure(config: AppConfig) -> str:
    """Point MLflow at this work dir's store and return the experiment id."""
    import mlflow

    config.workdir_path.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri(config))
    registered_model_name(config)  # a name the registry would refuse fails now, not after the run
    with _store_init_lock(config):
        # The first call creates the sqlite store and runs its migrations: two processes doing
        # that at once kill one of them (alembic CommandError), so it happens under a lock.
        experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifact_location = None
        if not config.tracking.tracking_uri:
            artifact_location = (config.workdir_path / "mlartifacts").as_uri()
        return mlflow.create_experiment(config.tracking.experiment, artifact_location=artifact_location)


@contextlib.contextmanager
def _store_init_lock(config: AppConfig) -> Iterator[None]:
    """An OS file lock around the local sqlite store's creation (no-op for a tracking server).

    Writers already hold the work dir's writer lock; this also covers readers (``personas
    query`` opens the model registry) started on a fresh work dir next to a writer.
    """
    if config.tracking.tracking_uri:
        yield
        return
    import fcntl

    with open(config.workdir_path / "mlflow.db.init-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def run(config: AppConfig, run_name: str, nested: bool = False, run_id: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None) -> Iterator[Any]:
    """An MLflow run in this work dir's experiment; ``run_id`` resumes an existing run."""
    import mlflow

    experiment_id = configure(config)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                          experiment_id=experiment_id, nested=nested, tags=dict(tags or {})) as active:
        yield active


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})


def log_metrics(metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        mlflow.log_metrics(numeric, step=step)


def log_delta_input(spark, ref, context: str) -> None:
    """Log a Delta table as a run input, pinned to its current version, with its schema and its
    exact row count as the profile."""
    import mlflow
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.types.utils import _infer_schema

    version = ref.version(spark)
    df = ref.read(spark, version=version)
    source = (DeltaDatasetSource(delta_table_name=ref.location, delta_table_version=version) if ref.is_catalog
              else DeltaDatasetSource(path=ref.location, delta_table_version=version))
    with warnings.catch_warnings():
        # The dataset's schema is inferred with the model-signature code, which warns that
        # integer columns cannot hold missing values at model inference time: a hint for
        # model inputs, not for a table recorded as a run's input.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        schema = _infer_schema(df)
    dataset = _delta_input_class()(
        source=source, name=f"{ref.name}@v{version}",
        # The digest names the exact input: table and version; computing one from the data
        # would scan it for nothing.
        digest=f"{ref.name}-v{version}"[:36], schema=schema,
        # An unfiltered count of a Delta table is answered from its log's file statistics.
        rows=df.count(),
    )
    mlflow.log_input(dataset, context=context)


@functools.cache  # mlflow is imported on first use, so the class is built then, once
def _delta_input_class():
    from mlflow.data.meta_dataset import MetaDataset

    class DeltaInput(MetaDataset):
        """A Delta table version as an MLflow input, profiled by its exact row count.

        Not ``mlflow.data.from_spark``: its profile counts the rows through a Python RDD of the
        whole table (``df.rdd``), a Spark job that outlives its 5-second timeout and held both
        cores for 134 s at 13.3M purchases while the graph build waited."""

        def __init__(self, *, rows: int, **kwargs):
            self._rows = rows
            super().__init__(**kwargs)

        @property
        def profile(self):
            return {"num_rows": self._rows}

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    return DeltaInput


def log_json_artifact(payload: Any, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(json.dumps(payload, indent=2, default=str), artifact_file)


def log_file_artifact(path: Path, artifact_path: Optional[str] = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_bar_chart(values: Mapping[str, float], title: str, xlabel: str, artifact_file: str) -> None:
    """A horizontal bar chart (e.g. the persona distribution) as a PNG artifact."""
    import mlflow
    from matplotlib.figure import Figure

    labels = list(values)
    # A bare Figure, not pyplot: no process-wide backend switch under a notebook's feet.
    fig = Figure(figsize=(8, max(2.5, 0.3 * len(labels))))
    ax = fig.subplots()
    ax.barh(labels[::-1], [values[k] for k in labels][::-1])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    mlflow.log_figure(fig, artifact_file)


def log_line_chart(series: Mapping[str, list[float]], title: str, xlabel: str, ylabel: str,
                   artifact_file: str, log_y: bool = False) -> None:
    import mlflow
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, ys in series.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=name)
    if log_y:
        ax.set_yscale("symlog")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    mlflow.log_figure(fig, artifact_file)


def log_convergence_chart(rounds: list[Mapping[str, Any]], artifact_file: str) -> None:
    """RevAff per superstep, one colour per round: the largest residual left behind (an entry
    below theta, never pushed) against theta and the error bound epsilon, and the messages sent.

    ``rounds``: [{"residuals": [...], "messages": [...], "theta": t, "epsilon": e}], supersteps 1..n.
    """
    import mlflow
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    residual_ax, messages_ax = fig.subplots(1, 2)
    positive = []
    for index, figures in enumerate(rounds):
        colour = f"C{index % 10}"
        steps = list(range(1, len(figures["residuals"]) + 1))
        residual_ax.plot(steps, figures["residuals"], marker="o", color=colour, label=f"round {index + 1} residual")
        residual_ax.axhline(figures["theta"], color=colour, linestyle=":", label=f"round {index + 1} theta")
        residual_ax.axhline(figures["epsilon"], color=colour, linestyle="--", label=f"round {index + 1} epsilon")
        messages_ax.plot(steps, figures["messages"], marker="o", color=colour, label=f"round {index + 1}")
        positive += [v for v in [*figures["residuals"], figures["theta"], figures["epsilon"]] if v > 0]
    if positive:
        residual_ax.set_yscale("symlog", linthresh=min(positive) / 10)
    residual_ax.set_title("Largest residual left behind vs the bound")
    residual_ax.set_xlabel("superstep")
    residual_ax.set_ylabel("affinity")
    residual_ax.legend(fontsize="small", loc="best")
    messages_ax.set_title("Messages per superstep")
    messages_ax.set_xlabel("superstep")
    messages_ax.set_ylabel("messages")
    messages_ax.legend(fontsize="small")
    for ax in (residual_ax, messages_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    mlflow.log_figure(fig, artifact_file)


MODEL_DESCRIPTION = (
    "Cold-start personas (GPLR): scores a shopper the tables do not know from a few product ids. "
    "Input: a DataFrame with a `products` list column; output: one row per (input row, persona) with "
    "row, persona, score, probability, rank, matched_products; param `limit` (0: all). Each version "
    "is one pipeline run, aliased run_<run id prefix>; `current` is the newest.")


def describe_model(config: AppConfig, alias: str, description: str) -> None:
    """Descriptions on the registered model and on the version an alias points at."""
    from mlflow import MlflowClient

    name = registered_model_name(config)
    client = MlflowClient(tracking_uri=tracking_uri(config), registry_uri=registry_uri(config))
    client.update_registered_model(name, description=MODEL_DESCRIPTION)
    version = client.get_model_version_by_alias(name, alias)
    client.update_model_version(name, version.version, description=description)


def set_tags(tags: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def environment_tags() -> dict[str, str]:
    """Where and from which code a run ran: host, package version, git commit (MLflow's own
    ``mlflow.source.git.commit`` tag, shown on the run page)."""
    from persona_lib import __version__

    tags = {"personas.host": os.uname().nodename, "personas.version": __version__}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def git_commit() -> Optional[str]:
    """The code's commit: PERSONAS_GIT_COMMIT (the bundle sets it from ${bundle.git.commit}:
    a wheel on a cluster has no checkout), else the checkout the package runs from."""
    commit = os.environ.get("PERSONAS_GIT_COMMIT", "").strip()
    if commit:
        return commit
    if not (REPO_ROOT / ".git").exists():  # an installed wheel: no checkout of ours around it
        return None
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None
