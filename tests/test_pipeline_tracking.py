"""What one pipeline run leaves in MLflow, read back from the real local store: named runs
with the commit, params on every round's nested run, each metric once per step, a convergence
record per superstep, the distribution of all personas, and a described, signed model."""

from __future__ import annotations

import json
import re
import subprocess

import mlflow
import pytest
from mlflow import MlflowClient

from persona_lib import cold_start, tracking
from persona_lib.config import REPO_ROOT, load_config
from persona_lib.pipeline import run_pipeline
from persona_lib.taxonomy import load_taxonomy
from persona_lib.testing import TEST_CONF
from tests.landing_files import copy_landing_slice


@pytest.fixture(scope="module")
def tracked_run(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    config = load_config(TEST_CONF, workdir=str(root / "work"))
    config = config.replace("ingest", landing=str(copy_landing_slice(root / "landing")))
    config = config.replace("sampling", budget=0.2, rounds=2)
    summary = run_pipeline(spark, config)
    tracking.configure(config)
    client = MlflowClient(tracking_uri=tracking.tracking_uri(config), registry_uri=tracking.registry_uri(config))
    return config, summary, client


def nested_runs(client, run):
    found = client.search_runs([run.info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    return sorted(found, key=lambda r: int(r.data.params["round"]))


def test_the_run_is_named_after_the_config_and_date_and_tagged_with_the_commit(tracked_run):
    config, summary, client = tracked_run
    run = client.get_run(summary["run_id"])
    assert re.fullmatch(r"test-\d{4}-\d{2}-\d{2}T\d{4}Z", run.info.run_name), run.info.run_name
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == head


def test_every_round_run_has_its_params(tracked_run):
    _, summary, client = tracked_run
    rounds = nested_runs(client, client.get_run(summary["run_id"]))
    assert [r.data.params["round"] for r in rounds] == ["1", "2"]
    for run in rounds:
        assert {"rounds", "label_store_target", "sampled", "rechecks", "sampler", "labeller",
                "method", "epsilon", "theta", "lhat", "beta"} <= set(run.data.params)
    assert [r.data.params["sampler"] for r in rounds] == ["random", "du"]


def test_each_metric_is_logged_once_per_step(tracked_run):
    _, summary, client = tracked_run
    parent = client.get_run(summary["run_id"])
    for run in [parent, *nested_runs(client, parent)]:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), f"{run.info.run_name}: {key} logged twice at a step: {steps}"
    for index, run in enumerate(nested_runs(client, parent), start=1):
        assert [m.step for m in client.get_metric_history(run.info.run_id, "llm_calls")] == [index]


def test_every_superstep_records_its_residual_within_the_bound(tracked_run):
    _, summary, client = tracked_run
    for run in nested_runs(client, client.get_run(summary["run_id"])):
        residuals = client.get_metric_history(run.info.run_id, "superstep_residual")
        messages = client.get_metric_history(run.info.run_id, "superstep_messages")
        supersteps = int(run.data.metrics["supersteps"])
        assert sorted(m.step for m in residuals) == list(range(1, supersteps + 1))
        assert sorted(m.step for m in messages) == list(range(1, supersteps + 1))
        theta, epsilon = float(run.data.params["theta"]), float(run.data.params["epsilon"])
        assert theta <= epsilon
        assert all(m.value <= theta for m in residuals), [m.value for m in residuals]


def test_the_charts_cover_convergence_and_every_persona(tracked_run, tmp_path):
    config, summary, client = tracked_run
    charts = {a.path for a in client.list_artifacts(summary["run_id"], "charts")}
    assert {"charts/convergence.png", "charts/persona_distribution.png",
            "charts/persona_distribution.json"} <= charts
    path = mlflow.artifacts.download_artifacts(run_id=summary["run_id"],
                                               artifact_path="charts/persona_distribution.json",
                                               dst_path=str(tmp_path))
    counts = json.loads(open(path).read())
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    assert set(counts) == {p.name for p in taxonomy.personas}
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    assert sum(counts.values()) > 0


def test_the_registered_version_is_described_and_signed(tracked_run):
    config, summary, client = tracked_run
    from persona_lib.query import run_alias

    version = client.get_model_version_by_alias(config.tracking.registered_model, run_alias(summary["run_id"]))
    assert summary["run_id"] in version.description
    assert client.get_registered_model(config.tracking.registered_model).description == tracking.MODEL_DESCRIPTION
    model_uri = f"models:/{config.tracking.registered_model}/{version.version}"
    assert mlflow.models.get_model_info(model_uri).signature == cold_start.model_signature()
