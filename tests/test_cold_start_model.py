"""The cold-start model as a registry holds it: registered with a signature, and loadable where
persona_lib is not installed (a serving endpoint, a clean virtualenv)."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from persona_lib import cold_start, tracking

PRODUCT_PERSONAS = [("85123A", "home_decorator", 0.6), ("85123A", "gift_buyer", 0.2),
                    ("71053", "home_decorator", 0.1), ("71053", "party_planner", 0.5)]


@pytest.fixture
def registered(spark, config):
    """The model logged and registered in this work dir's local store; (config, model uri)."""
    product_personas = spark.createDataFrame(PRODUCT_PERSONAS, "product_id string, persona string, score double")
    with tracking.run(config, run_name="cold-start-test"):
        uri = cold_start.log_and_register(product_personas, tracking.registered_model_name(config), "run_test")
    return config, uri


def test_the_local_registry_is_the_sqlite_store_with_a_plain_model_name(config):
    assert tracking.registry_uri(config) == tracking.tracking_uri(config)
    assert tracking.registry_uri(config).startswith("sqlite:///")
    assert tracking.registered_model_name(config) == "personas_cold_start"


def test_the_registered_model_version_carries_the_signature(registered):
    config, uri = registered
    assert uri == f"models:/{config.tracking.registered_model}@run_test"
    client = MlflowClient(registry_uri=tracking.registry_uri(config))
    version = client.get_model_version_by_alias(config.tracking.registered_model, "run_test")
    assert client.get_model_version_by_alias(config.tracking.registered_model, "current").version == version.version
    signature = mlflow.models.get_model_info(uri).signature
    assert signature == cold_start.model_signature()
    assert signature.inputs.input_names() == ["products"]
    assert signature.outputs.input_names() == cold_start.OUTPUT_COLUMNS


def test_the_model_honours_its_limit_param(registered):
    _, uri = registered
    model = mlflow.pyfunc.load_model(uri)
    shopper = pd.DataFrame({"products": [["85123A", "71053", "never-seen"]]})
    every = model.predict(shopper)
    assert list(every.columns) == cold_start.OUTPUT_COLUMNS
    assert set(every["persona"]) == {"home_decorator", "gift_buyer", "party_planner"}
    assert set(every["matched_products"]) == {2}
    assert len(model.predict(shopper, params={"limit": 1})) == 1


CLEAN_LOAD = textwrap.dedent("""
    import importlib.util, json, sys
    # The interpreter's own site-packages, without its .pth files: the editable install of
    # persona_lib (a .pth import hook) is not processed, so the package is not importable.
    sys.path.append(sys.argv[1])
    assert importlib.util.find_spec("persona_lib") is None, "persona_lib is importable before loading"
    import mlflow
    import pandas as pd
    mlflow.set_tracking_uri(sys.argv[2])
    mlflow.set_registry_uri(sys.argv[2])
    model = mlflow.pyfunc.load_model(sys.argv[3])
    scored = model.predict(pd.DataFrame({"products": [["85123A", "71053"]]}))
    print(json.dumps({"personas": scored["persona"].tolist(),
                      "persona_lib": sys.modules["persona_lib"].__file__}))
""")


def test_the_registered_model_loads_without_the_repository_or_the_installed_package(registered, tmp_path):
    config, uri = registered
    requirements = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt", dst_path=str(tmp_path)))
    assert [line.split("==")[0] for line in requirements.read_text().split()] == ["mlflow", "pandas", "numpy"]
    # -I: no PYTHONPATH, no user site, not the current directory; -S: no site-packages hooks.
    # Run from an empty folder, so nothing of the repository is on sys.path.
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CLEAN_LOAD, sysconfig.get_paths()["purelib"],
         tracking.tracking_uri(config), uri],
        cwd=empty, capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["personas"] == ["home_decorator", "party_planner", "gift_buyer"]
    repository = str(Path(cold_start.__file__).resolve().parent.parent)
    assert not loaded["persona_lib"].startswith(repository), loaded["persona_lib"]


def test_the_model_is_logged_from_code_not_as_a_pickle(registered, tmp_path):
    _, uri = registered
    folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path)))
    flavor = json.dumps(__import__("yaml").safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"])
    assert "cold_start_pyfunc.py" in flavor
    assert not list(folder.rglob("python_model.pkl"))
