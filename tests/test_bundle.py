"""The Databricks asset bundle (databricks.yml) and conf/databricks.yaml, checked offline:
every task runs an entry point that exists, with parameters the CLI accepts and a config
that loads; the runtime, not the wheel, brings Spark."""

from __future__ import annotations

import configparser
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from persona_lib.cli import build_parser
from persona_lib.config import REPO_ROOT, TablesConfig, load_config
from persona_lib.errors import UsageError

BUNDLE = REPO_ROOT / "databricks.yml"
DATABRICKS_CONF = REPO_ROOT / "conf" / "databricks.yaml"
GRAPHFRAMES = "io.graphframes:graphframes-spark4_2.13:0.12.3"
REFERENCE = re.compile(r"\$\{([^}]+)\}")
UC_NAME = re.compile(r"^main\.personas\.[a-z_]+$")


def load_bundle() -> dict:
    """databricks.yml with its `include:` files merged and ${...} resolved as a deploy would:
    variables take their defaults, the workspace file path is this checkout."""
    bundle = yaml.safe_load(BUNDLE.read_text())
    for pattern in bundle.get("include", []):
        for path in sorted(REPO_ROOT.glob(pattern)):
            included = yaml.safe_load(path.read_text()) or {}
            for name, job in included.get("resources", {}).get("jobs", {}).items():
                bundle.setdefault("resources", {}).setdefault("jobs", {})[name] = job
    known = {f"var.{name}": spec.get("default") for name, spec in bundle.get("variables", {}).items()}
    known.update({"workspace.file_path": str(REPO_ROOT), "bundle.target": "dev",
                  "bundle.name": bundle["bundle"]["name"]})
    return _resolve(bundle, known)


def _resolve(value, known: dict):
    if isinstance(value, dict):
        return {k: _resolve(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, known) for v in value]
    if isinstance(value, str):
        for _ in range(5):  # a variable's default may itself refer to another
            unresolved = [ref for ref in REFERENCE.findall(value) if ref not in known]
            assert not unresolved, f"unknown bundle reference(s) {unresolved} in {value!r}"
            value = REFERENCE.sub(lambda m: str(known[m.group(1)]), value)
            if not REFERENCE.search(value):
                break
    return value


def tasks() -> list[tuple[str, dict]]:
    jobs = load_bundle()["resources"]["jobs"]
    return [(f"{job_name}.{task['task_key']}", task) for job_name, job in jobs.items() for task in job["tasks"]]


def job_command(python_file: Path) -> list[str]:
    """The subcommand a jobs/*.py entry point runs (`main(["run", *sys.argv[1:]])` -> ["run"])."""
    match = re.search(r"main\(\[(.*?)\*sys\.argv", python_file.read_text())
    assert match, f"{python_file} does not call persona_lib.cli.main([...])"
    return re.findall(r'"([^"]+)"', match.group(1))


def cli_arguments(task: dict) -> list[str]:
    """The argv the task hands to persona_lib.cli.main, checking its entry point exists."""
    if "python_wheel_task" in task:
        wheel_task = task["python_wheel_task"]
        metadata = configparser.ConfigParser()
        metadata.read(REPO_ROOT / "setup.cfg")
        assert wheel_task["package_name"] == metadata["metadata"]["name"]
        scripts = dict(line.split("=", 1) for line in
                       metadata["options.entry_points"]["console_scripts"].strip().splitlines())
        scripts = {k.strip(): v.strip() for k, v in scripts.items()}
        assert scripts.get(wheel_task["entry_point"]) == "persona_lib.cli:main"
        return list(wheel_task.get("parameters", []))
    if "spark_python_task" in task:
        python_file = REPO_ROOT / task["spark_python_task"]["python_file"]
        assert python_file.is_file(), f"{python_file} does not exist"
        return job_command(python_file) + list(task["spark_python_task"].get("parameters", []))
    raise AssertionError(f"task {task['task_key']} runs neither the wheel's console script nor a jobs/ file")


TASKS = tasks()


def test_the_job_runs_ingest_then_pipeline_then_evaluate():
    by_key = {task["task_key"]: task for _, task in TASKS}
    assert {"ingest", "pipeline", "evaluate"} <= set(by_key)
    assert [d["task_key"] for d in by_key["pipeline"]["depends_on"]] == ["ingest"]
    assert [d["task_key"] for d in by_key["evaluate"]["depends_on"]] == ["pipeline"]
    for _, task in TASKS:
        for dependency in task.get("depends_on", []):
            assert dependency["task_key"] in by_key


@pytest.mark.parametrize("name,task", TASKS, ids=[name for name, _ in TASKS])
def test_every_task_parameter_is_accepted_by_the_cli(name, task):
    argv = cli_arguments(task)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        pytest.fail(f"{name}: the CLI rejects {argv}: {exc}")
    assert callable(args.handler)


@pytest.mark.parametrize("name,task", TASKS, ids=[name for name, _ in TASKS])
def test_every_config_a_task_names_loads(name, task):
    argv = cli_arguments(task)
    assert "--conf" in argv, f"{name} does not name its config"
    conf = Path(argv[argv.index("--conf") + 1])
    assert conf.is_file(), f"{name}: {conf} is not in the bundle's files"
    load_config(conf)


def test_every_job_entry_point_runs_a_registered_subcommand():
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for python_file in sorted((REPO_ROOT / "jobs").glob("*.py")):
        assert job_command(python_file)[0] in subcommands, python_file.name


def test_every_task_installs_the_wheel_and_graphframes_from_maven():
    artifacts = load_bundle()["artifacts"]
    assert any("dist" in spec.get("build", "") for spec in artifacts.values())
    for name, task in TASKS:
        libraries = task.get("libraries", [])
        assert any(lib.get("whl", "").startswith("./dist/") for lib in libraries), name
        assert {"coordinates": GRAPHFRAMES} in [lib["maven"] for lib in libraries if "maven" in lib], name
        assert not [lib for lib in libraries if "pyspark" in str(lib.get("pypi", ""))], name


def test_the_pipeline_task_runs_on_a_gpu_cluster_with_vllm():
    job = next(iter(load_bundle()["resources"]["jobs"].values()))
    pipeline = next(task for task in job["tasks"] if task["task_key"] == "pipeline")
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    cluster = clusters[pipeline["job_cluster_key"]]
    assert "gpu" in cluster["spark_version"]
    assert cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "1"
    vllm_pin = (REPO_ROOT / "requirements" / "vllm-gpu.txt").read_text().split("vllm==")[1].split()[0]
    assert {"pypi": {"package": f"vllm=={vllm_pin}"}} in pipeline["libraries"]


def test_databricks_config_names_unity_catalog_tables_and_a_volume_model():
    config = load_config(DATABRICKS_CONF)
    for field in dataclasses.fields(TablesConfig):
        name = getattr(config.tables, field.name)
        assert UC_NAME.match(name), f"tables.{field.name} = {name!r} is not a main.personas.* table"
    names = [getattr(config.tables, f.name) for f in dataclasses.fields(TablesConfig)]
    assert len(set(names)) == len(names), "two table keys share one Unity Catalog table"
    assert config.labelling.labeller == "vllm"
    assert config.labelling.vllm.model_path.startswith("/Volumes/")
    assert config.workdir.startswith("/Volumes/")
    assert config.tracking.tracking_uri == "databricks"
    assert config.tracking.experiment.startswith("/")


def test_databricks_config_relative_paths_are_files_of_this_repository():
    """base_dir is a volume holding a copy of conf/ and data/: what it needs must exist here."""
    config = load_config(DATABRICKS_CONF)
    relative = [config.labelling.taxonomy, config.labelling.replay_answers, config.evaluation.data_dir]
    for path in relative:
        assert not Path(path).is_absolute()
        assert (REPO_ROOT / path).exists(), f"{path} is not in the repository"


def test_the_wheel_does_not_require_pyspark_directly():
    metadata = configparser.ConfigParser()
    metadata.read(REPO_ROOT / "setup.cfg")
    requires = metadata["options"]["install_requires"].lower()
    assert "pyspark" not in requires
    assert "pyspark" in metadata["options.extras_require"]["local"].lower()


def test_the_wheel_does_not_pull_pyspark_transitively():
    from importlib.metadata import requires

    metadata = configparser.ConfigParser()
    metadata.read(REPO_ROOT / "setup.cfg")
    direct = [re.split(r"[<>=!~ ]", line.strip())[0] for line in
              metadata["options"]["install_requires"].strip().splitlines() if line.strip()]
    pulled = [(dist, req) for dist in direct for req in (requires(dist) or [])
              if req.lower().startswith("pyspark") and "extra ==" not in req]
    assert not pulled, pulled
