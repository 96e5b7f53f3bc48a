"""The Databricks asset bundle (databricks.yml and resources/*.yml) and conf/databricks.yaml,
checked offline, per target, as `databricks bundle validate` would see them:

- every resource loads into the typed classes of Databricks' own `databricks-bundles`
  package (``Job.from_dict`` and so on), so a wrong key, type or enum value fails;
- the rules the CLI enforces outside that schema hold (production needs workspace.root_path,
  run_as names exactly one identity, target variables are declared);
- every file, wheel and entry point a task refers to exists, with parameters the CLI accepts
  and a config that loads; the runtime, not the wheel, brings Spark.
"""

from __future__ import annotations

import configparser
import copy
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from databricks.bundles.jobs import Job, JobRunAs
from databricks.bundles.registered_models import RegisteredModel
from databricks.bundles.schemas import Schema
from databricks.bundles.volumes import Volume

from persona_lib.cli import build_parser
from persona_lib.config import REPO_ROOT, load_config
from persona_lib.errors import UsageError
from persona_lib.storage import resolve_tables

BUNDLE = REPO_ROOT / "databricks.yml"
DATABRICKS_CONF = REPO_ROOT / "conf" / "databricks.yaml"
REFERENCE = re.compile(r"\$\{([^}]+)\}")
UC_NAME = re.compile(r"^main\.personas\.[a-z_]+$")

# The typed class of each resource type the bundle uses.
RESOURCE_CLASSES = {"jobs": Job, "schemas": Schema, "volumes": Volume, "registered_models": RegisteredModel}
# Keys of the configuration root and of a target (bundle/config/root.go and target.go of the
# Databricks CLI); the typed package covers resources, not these.
ROOT_KEYS = {"bundle", "include", "variables", "workspace", "artifacts", "resources", "targets", "sync",
             "run_as", "presets", "experimental", "permissions", "scripts", "python"}
TARGET_KEYS = {"default", "mode", "presets", "compute_id", "cluster_id", "bundle", "workspace", "artifacts",
               "resources", "variables", "git", "run_as", "sync", "permissions"}
VARIABLE_KEYS = {"type", "default", "description", "lookup"}
# Target fields the CLI merges into the root (MergeTargetOverrides); variables are replaced.
MERGED_TARGET_FIELDS = ("bundle", "workspace", "artifacts", "resources", "sync", "permissions", "presets")
# Variables without a default that a deploy must pass (--var): documented in the README.
DEPLOY_TIME_VARIABLES = {"service_principal", "alert_email"}
# What the CLI knows at deploy time, as a deploying user "ana" would see it.
DEPLOY_CONTEXT = {
    "workspace.current_user.userName": "ana@example.com",
    "workspace.current_user.short_name": "ana",
    "workspace.file_path": str(REPO_ROOT),  # the synced files are this checkout
    "bundle.git.commit": "0" * 40,
}


def bundle_files() -> list[tuple[Path, dict]]:
    """databricks.yml and every file its `include:` globs match, parsed."""
    root = yaml.safe_load(BUNDLE.read_text())
    files = [(BUNDLE, root)]
    for pattern in root.get("include", []):
        matched = sorted(REPO_ROOT.glob(pattern))
        assert matched, f"include {pattern!r} matches no file"
        files += [(path, yaml.safe_load(path.read_text()) or {}) for path in matched]
    return files


def _merge(base, override):
    """The CLI's merge: mappings key by key, sequences concatenated, scalars replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + copy.deepcopy(override)
    return copy.deepcopy(override)


def load_target(target: str, deploy_vars: dict | None = None) -> dict:
    """The bundle as deployed to ``target``: files merged, target overrides applied, every
    ${...} resolved (required deploy-time variables from ``deploy_vars``)."""
    root: dict = {}
    for _, data in bundle_files():
        root = _merge(root, data)
    spec = root.get("targets", {}).get(target) or {}
    for field in MERGED_TARGET_FIELDS:
        if field in spec:
            root[field] = _merge(root.get(field, {}), spec[field])
    if "run_as" in spec:
        root["run_as"] = spec["run_as"]
    root.setdefault("bundle", {})["target"] = target
    if "mode" in spec:
        root["bundle"]["mode"] = spec["mode"]
    values = {name: var.get("default") for name, var in root.get("variables", {}).items()}
    values.update(spec.get("variables", {}))
    if deploy_vars is None:  # a placeholder for each deploy-time value the target leaves open
        deploy_vars = {name: f"<{name}>" for name in DEPLOY_TIME_VARIABLES if values.get(name) is None}
    values.update(deploy_vars)
    missing = [name for name, value in values.items() if value is None]
    assert not missing, f"target {target}: variables without a value: {missing}"
    known = {f"var.{name}": value for name, value in values.items()}
    known.update(DEPLOY_CONTEXT)
    known.update({"bundle.target": target, "bundle.name": root["bundle"]["name"]})
    resolved = _resolve(root, known)
    # ${resources.<type>.<key>.<field>}: a reference to another resource (and a deploy order).
    for _ in range(3):
        resolved = _resolve(resolved, known, resources=resolved.get("resources", {}))
    return resolved


def _resolve(value, known: dict, resources: dict | None = None):
    if isinstance(value, dict):
        return {k: _resolve(v, known, resources) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, known, resources) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(match):
        ref = match.group(1)
        if ref in known:
            return str(known[ref])
        if ref.startswith("resources.") and resources is not None:
            node = resources
            for part in ref.split(".")[1:]:
                assert isinstance(node, dict) and part in node, f"unknown bundle reference ${{{ref}}}"
                node = node[part]
            return str(node)
        if ref.startswith("resources."):
            return match.group(0)  # resolved once the resources themselves are
        raise AssertionError(f"unknown bundle reference ${{{ref}}} in {value!r}")

    for _ in range(5):  # a variable's value may itself refer to another
        value = REFERENCE.sub(lookup, value)
        if not REFERENCE.search(value) or (resources is None and value.count("${resources.")):
            break
    return value


TARGETS = sorted(yaml.safe_load(BUNDLE.read_text())["targets"])


def tasks(target: str = "dev") -> list[tuple[str, dict]]:
    jobs = load_target(target)["resources"]["jobs"]
    return [(f"{job_name}.{task['task_key']}", task) for job_name, job in jobs.items() for task in job["tasks"]]


def resources_of(target: str) -> list[tuple[str, str, dict]]:
    resources = load_target(target)["resources"]
    return [(kind, name, spec) for kind, items in resources.items() for name, spec in items.items()]


def job_command(python_file: Path) -> list[str]:
    """The subcommand a jobs/*.py entry point runs (`main(["run", *sys.argv[1:]])` -> ["run"])."""
    match = re.search(r"main\(\[(.*?)\*sys\.argv", python_file.read_text())
    assert match, f"{python_file} does not call persona_lib.cli.main([...])"
    return re.findall(r'"([^"]+)"', match.group(1))


def console_scripts() -> dict[str, str]:
    metadata = configparser.ConfigParser()
    metadata.read(REPO_ROOT / "setup.cfg")
    lines = metadata["options.entry_points"]["console_scripts"].strip().splitlines()
    return {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines)}


def cli_arguments(task: dict) -> list[str]:
    """The argv the task hands to persona_lib.cli, checking its entry point exists."""
    if "python_wheel_task" in task:
        wheel_task = task["python_wheel_task"]
        metadata = configparser.ConfigParser()
        metadata.read(REPO_ROOT / "setup.cfg")
        assert wheel_task["package_name"] == metadata["metadata"]["name"]
        target = console_scripts().get(wheel_task["entry_point"])
        assert target, f"no console script {wheel_task['entry_point']!r} in setup.cfg"
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
        return list(wheel_task.get("parameters", []))
    if "spark_python_task" in task:
        python_file = REPO_ROOT / task["spark_python_task"]["python_file"]
        assert python_file.is_file(), f"{python_file} does not exist"
        return job_command(python_file) + list(task["spark_python_task"].get("parameters", []))
    raise AssertionError(f"task {task['task_key']} runs neither the wheel's console script nor a jobs/ file")


TASKS = tasks()
RESOURCES = [(target, *entry) for target in TARGETS for entry in resources_of(target)]


# -- the schema: Databricks' typed classes ---------------------------------------------------

@pytest.mark.parametrize("target,kind,name,spec", RESOURCES,
                         ids=[f"{t}-{k}.{n}" for t, k, n, _ in RESOURCES])
def test_every_resource_loads_into_the_databricks_bundles_classes(target, kind, name, spec):
    assert kind in RESOURCE_CLASSES, f"resources.{kind}: no typed class checked for this resource type"
    RESOURCE_CLASSES[kind].from_dict(spec)


def test_a_wrong_key_or_value_fails_the_typed_load():
    job = copy.deepcopy(load_target("dev")["resources"]["jobs"]["personas"])
    job["tasks"][0]["python_wheel_task"]["entrypoint"] = "personas"
    with pytest.raises(ValueError, match="entrypoint"):
        Job.from_dict(job)
    job = copy.deepcopy(load_target("dev")["resources"]["jobs"]["personas"])
    job["schedule"]["pause_status"] = "PAUSE"
    with pytest.raises(ValueError, match="PAUSE"):
        Job.from_dict(job)


def test_every_file_uses_only_keys_the_cli_knows():
    for path, data in bundle_files():
        assert set(data) <= ROOT_KEYS, f"{path.name}: unknown top-level keys {set(data) - ROOT_KEYS}"
        for name, variable in data.get("variables", {}).items():
            assert set(variable) <= VARIABLE_KEYS, f"{path.name}: variables.{name} keys {set(variable)}"
        for name, target in data.get("targets", {}).items():
            assert set(target) <= TARGET_KEYS, f"{path.name}: targets.{name} keys {set(target) - TARGET_KEYS}"


# -- the CLI's rules outside the schema ------------------------------------------------------

def test_a_production_target_sets_its_root_path():
    """validate_target_mode.go: "target with 'mode: production' must set 'workspace.root_path'"."""
    targets = yaml.safe_load(BUNDLE.read_text())["targets"]
    production = [name for name, spec in targets.items() if spec.get("mode") == "production"]
    assert production == ["prod"]
    for name in production:
        assert targets[name].get("workspace", {}).get("root_path"), f"targets.{name} has no workspace.root_path"


def test_development_targets_keep_their_paths_per_user():
    """validate_target_mode.go: development paths must contain the user name (or be the default)."""
    targets = yaml.safe_load(BUNDLE.read_text())["targets"]
    assert {spec.get("mode") for spec in targets.values()} <= {"development", "production"}
    for name, spec in targets.items():
        if spec.get("mode") != "development":
            continue
        for key, path in spec.get("workspace", {}).items():
            if key.endswith("_path"):
                assert path.startswith("~/") or "${workspace.current_user." in path, f"targets.{name}.workspace.{key}"
        assert "${workspace.current_user.short_name}" in spec["variables"]["schema"], "dev would share a schema"


def test_target_variables_are_declared_and_only_deploy_time_ones_lack_a_value():
    root = yaml.safe_load(BUNDLE.read_text())
    declared = root["variables"]
    for name, spec in root["targets"].items():
        undeclared = set(spec.get("variables", {})) - set(declared)
        assert not undeclared, f"targets.{name} sets undeclared variables {undeclared}"
    assert {name for name, var in declared.items() if "default" not in var} == DEPLOY_TIME_VARIABLES


def test_a_prod_deploy_without_its_required_variables_is_refused():
    with pytest.raises(AssertionError, match="service_principal"):
        load_target("prod", deploy_vars={"alert_email": "oncall@example.com"})


def test_prod_runs_as_exactly_one_service_principal():
    bundle = load_target("prod", {"service_principal": "1234-sp", "alert_email": "oncall@example.com"})
    run_as = JobRunAs.from_dict(bundle["run_as"])
    assert run_as.service_principal_name == "1234-sp"
    assert run_as.user_name is None and run_as.group_name is None
    assert bundle["workspace"]["root_path"] == "/Workspace/Users/1234-sp/.bundle/personas/prod"
    assert "run_as" not in load_target("dev"), "dev runs as the deploying user"


def test_prod_grants_the_job_identity_what_it_needs_on_the_schema_and_volumes():
    resources = load_target("prod", {"service_principal": "1234-sp", "alert_email": "x@example.com"})["resources"]

    def privileges(spec):
        return {p for grant in spec.get("grants", []) if grant["principal"] == "1234-sp" for p in grant["privileges"]}

    schema = resources["schemas"]["personas"]
    assert {"USE_SCHEMA", "CREATE_TABLE", "CREATE_MODEL", "SELECT", "MODIFY"} <= privileges(schema)
    volumes = resources["volumes"]
    assert privileges(volumes["work"]) == {"READ_VOLUME", "WRITE_VOLUME"}
    for name in ("files", "landing", "models"):
        assert privileges(volumes[name]) == {"READ_VOLUME"}, name


# -- what the job refers to ------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_schema_and_volumes_follow_the_targets_catalog_and_schema(target):
    bundle = load_target(target, {"service_principal": "sp", "alert_email": "x@example.com"})
    variables = {**{k: v.get("default") for k, v in bundle["variables"].items()},
                 **yaml.safe_load(BUNDLE.read_text())["targets"][target].get("variables", {})}
    catalog = variables["catalog"]
    schema = _resolve(variables["schema"], {**DEPLOY_CONTEXT})
    assert bundle["resources"]["schemas"]["personas"] == {**bundle["resources"]["schemas"]["personas"],
                                                          "catalog_name": catalog, "name": schema}
    volumes = bundle["resources"]["volumes"]
    assert {(v["catalog_name"], v["schema_name"]) for v in volumes.values()} == {(catalog, schema)}
    # Every volume path of the job's config is one of these volumes, once moved to the schema.
    config = load_config(DATABRICKS_CONF, catalog=catalog, schema=schema)
    for path in (config.workdir, config.labelling.replay_answers, config.labelling.replay_proposal,
                 config.labelling.products.replay_answers, config.evaluation.data_dir, config.ingest.landing,
                 config.labelling.vllm.model_path):
        assert path.split("/")[1:5] in [["Volumes", catalog, schema, v["name"]] for v in volumes.values()], path


@pytest.mark.parametrize("target", TARGETS)
def test_every_task_passes_its_targets_catalog_and_schema(target):
    bundle = load_target(target, {"service_principal": "sp", "alert_email": "x@example.com"})
    schema = bundle["resources"]["schemas"]["personas"]
    for _, task in [(n, t) for job in bundle["resources"]["jobs"].values() for n, t in
                    ((t["task_key"], t) for t in job["tasks"])]:
        args = build_parser().parse_args(cli_arguments(task))
        assert (args.catalog, args.schema) == (schema["catalog_name"], schema["name"]), task["task_key"]


def test_the_job_runs_ingest_then_pipeline_then_evaluate():
    by_key = {task["task_key"]: task for _, task in TASKS}
    assert {"ingest", "pipeline", "evaluate"} <= set(by_key)
    assert [d["task_key"] for d in by_key["pipeline"]["depends_on"]] == ["ingest"]
    assert [d["task_key"] for d in by_key["evaluate"]["depends_on"]] == ["pipeline"]
    for _, task in TASKS:
        for dependency in task.get("depends_on", []):
            assert dependency["task_key"] in by_key


def test_the_job_is_scheduled_bounded_retried_and_tells_someone_when_it_fails():
    job = load_target("dev")["resources"]["jobs"]["personas"]
    assert Job.from_dict(job).schedule.quartz_cron_expression == yaml.safe_load(
        BUNDLE.read_text())["variables"]["schedule"]["default"]
    assert job["email_notifications"]["on_failure"] == ["ana@example.com"]
    assert job["timeout_seconds"] > 0
    for _, task in TASKS:
        assert 0 < task["timeout_seconds"] <= job["timeout_seconds"], task["task_key"]
        assert task["max_retries"] >= 1 and task["min_retry_interval_millis"] > 0, task["task_key"]


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
    args = build_parser().parse_args(cli_arguments(task))
    assert args.conf, f"{name} does not name its config"
    assert Path(args.conf).is_file(), f"{name}: {args.conf} is not in the bundle's files"
    load_config(args.conf, catalog=args.catalog, schema=args.schema)


def test_every_job_entry_point_runs_a_registered_subcommand():
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for python_file in sorted((REPO_ROOT / "jobs").glob("*.py")):
        assert job_command(python_file)[0] in subcommands, python_file.name


def test_every_task_installs_the_wheel_the_bundle_builds_and_no_maven_library():
    build_dirs = set()
    for spec in load_target("dev")["artifacts"].values():
        match = re.search(r"--wheel-dir (\S+)", spec["build"])
        assert match, f"the artifact build {spec['build']!r} names no wheel dir"
        build_dirs.add((REPO_ROOT / spec.get("path", ".") / match.group(1)).resolve())
    job_file = REPO_ROOT / "resources" / "personas.job.yml"
    for name, task in TASKS:
        libraries = task.get("libraries", [])
        wheels = [lib["whl"] for lib in libraries if "whl" in lib]
        assert wheels, name
        # A library path is relative to the file that defines the job.
        assert {(job_file.parent / wheel).resolve().parent for wheel in wheels} <= build_dirs, (name, wheels)
        assert not [lib for lib in libraries if "maven" in lib], f"{name}: the code uses no JVM library"
        assert not [lib for lib in libraries if "pyspark" in str(lib.get("pypi", ""))], name


def test_the_job_tags_runs_with_the_deployed_commit():
    job = load_target("dev")["resources"]["jobs"]["personas"]
    for cluster in job["job_clusters"]:
        assert cluster["new_cluster"]["spark_env_vars"]["PERSONAS_GIT_COMMIT"] == DEPLOY_CONTEXT["bundle.git.commit"]


def test_the_pipeline_task_runs_on_a_gpu_cluster_with_vllm():
    job = load_target("dev")["resources"]["jobs"]["personas"]
    pipeline = next(task for task in job["tasks"] if task["task_key"] == "pipeline")
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    cluster = clusters[pipeline["job_cluster_key"]]
    assert "gpu" in cluster["spark_version"]
    assert cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "1"
    vllm_pin = (REPO_ROOT / "requirements" / "vllm-gpu.txt").read_text().split("vllm==")[1].split()[0]
    assert {"pypi": {"package": f"vllm=={vllm_pin}"}} in pipeline["libraries"]


# -- the entry point a python_wheel_task calls -----------------------------------------------

WHEEL_TASK = """
import importlib, sys
module, function = sys.argv[1].split(":")
sys.argv = ["personas", *sys.argv[2:]]
getattr(importlib.import_module(module), function)()  # a python_wheel_task ignores the return value
"""


@pytest.mark.parametrize("args,code", [
    (["ingest", "--conf", "/nonexistent/conf.yaml"], 3),
    (["ingest", "--catalog", "main"], 2),
    (["--help"], 0),
])
def test_the_console_entry_point_exits_with_the_commands_code_when_called_as_a_wheel_task(args, code):
    result = subprocess.run([sys.executable, "-c", WHEEL_TASK, console_scripts()["personas"], *args],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]


def test_main_still_returns_the_code_for_callers_in_python():
    from persona_lib.cli import main

    assert main(["ingest", "--conf", "/nonexistent/conf.yaml"]) == 3


# -- conf/databricks.yaml and the wheel ------------------------------------------------------

def test_databricks_config_names_unity_catalog_tables_and_a_volume_model():
    config = load_config(DATABRICKS_CONF)
    tables = resolve_tables(config)
    for key, ref in tables.items():
        assert ref.is_catalog and UC_NAME.match(ref.location), f"{key} = {ref.location!r} is not a main.personas.* table"
    names = [ref.location for _, ref in tables.items()]
    assert len(set(names)) == len(names), "two table keys share one Unity Catalog table"
    assert config.labelling.labeller == "vllm"
    assert config.labelling.vllm.model_path.startswith("/Volumes/")
    assert config.workdir.startswith("/Volumes/")
    assert config.tracking.tracking_uri == "databricks"
    assert UC_NAME.match(config.tracking.registered_model)
    assert config.tracking.experiment.startswith("/")


def test_databricks_config_files_are_files_of_this_repository():
    """The taxonomy is synced with the bundle beside the config; the data files are on the files
    volume, a copy of data/: what they name must exist here."""
    config = load_config(DATABRICKS_CONF)
    assert Path(config.labelling.taxonomy) == REPO_ROOT / "conf" / "personas" / "online_retail.yaml"
    files_volume = "/Volumes/main/personas/files/"
    on_volume = [config.labelling.replay_answers, config.labelling.replay_proposal,
                 config.labelling.products.replay_answers, config.evaluation.data_dir]
    for path in on_volume:
        assert path.startswith(files_volume), path
        assert (REPO_ROOT / path[len(files_volume):]).exists(), f"{path} is not in the repository"


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
