"""``personas serve`` over a real published run: every endpoint against what the Spark path
(``query.predict``, ``query.rerank``, the published tables) answers, every error case, the
switch to a new run under concurrent requests, forgetting without a new run, the API key.

The service runs as the real CLI subprocess (``personas serve``) on a free loopback port."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from persona_lib import contracts, publishing, storage, tracking
from persona_lib.config import REPO_ROOT, load_config
from persona_lib.query import predict, rerank, run_alias
from persona_lib.testing import TEST_CONF
from tests.landing_files import copy_landing_slice

PERSONAS = Path(sys.executable).with_name("personas")
TOMBSTONE_KEY = "test-tombstone-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """One keep-alive HTTP connection to the service."""

    def __init__(self, port: int, headers: dict | None = None):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = headers or {}

    def call(self, method: str, path: str, body=None, raw: bytes | None = None, headers: dict | None = None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json", **self.headers, **(headers or {})}
        try:
            self.connection.request(method, path, body=data, headers=headers)
            response = self.connection.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closed the idle keep-alive connection (a slow check between calls):
            # reconnect once, as an HTTP client does.
            self.connection.close()
            self.connection.request(method, path, body=data, headers=headers)
            response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def close(self) -> None:
        self.connection.close()


class Server:
    def __init__(self, conf: Path, workdir: Path, env: dict | None = None):
        self.port = free_port()
        self.log = workdir.parent / f"serve-{self.port}.log"
        environment = {**os.environ, "PERSONAS_TOMBSTONE_KEY": TOMBSTONE_KEY, **(env or {})}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(PERSONAS), "serve", "--conf", str(conf), "--workdir", str(workdir), "--port", str(self.port)],
                cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"personas serve exited {self.process.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"personas serve did not start: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def tombstone_key_env():
    previous = os.environ.get("PERSONAS_TOMBSTONE_KEY")
    os.environ["PERSONAS_TOMBSTONE_KEY"] = TOMBSTONE_KEY
    yield
    if previous is None:
        os.environ.pop("PERSONAS_TOMBSTONE_KEY", None)
    else:
        os.environ["PERSONAS_TOMBSTONE_KEY"] = previous


@pytest.fixture(scope="module")
def published(spark, tmp_path_factory, tombstone_key_env):
    """A real pipeline run on a slice of the bundled data, and a serve config polling fast."""
    from persona_lib.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("serve")
    landing = copy_landing_slice(root / "landing")
    conf = root / "serve.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "ingest": {"landing": str(landing)},
                                    "sampling": {"budget": 0.3, "rounds": 1},
                                    "serving": {"poll_seconds": 0.2}}))
    config = load_config(conf, workdir=str(root / "work"))
    run_pipeline(spark, config)
    return conf, config


@pytest.fixture(scope="module")
def server(published):
    conf, config = published
    running = Server(conf, config.workdir_path)
    yield running
    running.stop()


@pytest.fixture
def client(server):
    connection = Client(server.port)
    yield connection
    connection.close()


def customers(spark, config, ambiguous: bool, min_personas: int = 2) -> list[str]:
    table = publishing.read_current(spark, storage.resolve_tables(config), "customer_personas")
    rows = (table.where((F.col("is_ambiguous") == ambiguous) & (F.size("personas") >= min_personas))
            .orderBy("customer_id").select("customer_id").limit(5).collect())
    return [r["customer_id"] for r in rows]


def test_query_answers_exactly_what_predict_answers(spark, published, client):
    _, config = published
    for customer in customers(spark, config, False)[:3] + customers(spark, config, True)[:2]:
        query = {"from": "customer_purchases", "where": {"customer_id": customer}, "predict": "persona",
                 "select": ["$p", "$why", "persona", "score", "rank", "source", "is_ambiguous"], "limit": 3}
        status, body = client.call("POST", "/query", query)
        assert status == 200
        assert body == predict(query, spark, config)


def test_query_scores_a_new_shopper_with_the_cold_start_model(spark, published, client):
    _, config = published
    products = [r["product_id"] for r in publishing.read_current(spark, storage.resolve_tables(config), "product_personas")
                .select("product_id").distinct().orderBy("product_id").limit(3).collect()]
    query = {"where": {"customer_id": "no-such-customer", "products": products}, "limit": 4}
    status, body = client.call("POST", "/query", query)
    assert status == 200 and len(body) == 4
    assert body == predict(query, spark, config)


def test_customer_personas_are_the_published_row_with_probabilities_and_ranks(spark, published, client):
    _, config = published
    customer = customers(spark, config, False)[0]
    status, body = client.call("GET", f"/customers/{customer}/personas")
    assert status == 200
    row = publishing.read_current(spark, storage.resolve_tables(config), "customer_personas").where(F.col("customer_id") == customer).first()
    affinity = {r["persona"]: r for r in publishing.read_current(spark, storage.resolve_tables(config), "persona_affinity")
                .where(F.col("customer_id") == customer).collect()}
    assert [p["persona"] for p in body["personas"]] == list(row["personas"])
    assert [(p["probability"], p["rank"]) for p in body["personas"]] == \
        [(affinity[name]["probability"], affinity[name]["rank"]) for name in row["personas"]]
    assert body["confidence"] == row["confidence"] and body["is_ambiguous"] == row["is_ambiguous"]
    assert body["why"]["labelled_neighbours"] == row["why"]["labelled_neighbours"]
    assert [p["product_id"] for p in body["why"]["products"]] == [p["product_id"] for p in row["why"]["products"]]
    assert body["run_id"] == publishing.latest_complete_run(spark, config)["run_id"]


def test_an_unknown_customer_is_a_404_everywhere(client):
    status, body = client.call("GET", "/customers/no-such-customer/personas")
    assert status == 404 and "no-such-customer" in body["error"]
    status, body = client.call("POST", "/query", {"where": {"customer_id": "no-such-customer"}})
    assert status == 404 and "no-such-customer" in body["error"]
    status, body = client.call("POST", "/rerank", {"customer_id": "no-such-customer",
                                                   "candidates": [{"product_id": "X", "base_score": 1.0}]})
    assert status == 404 and "no-such-customer" in body["error"]


def test_cold_start_lists_unknown_products_and_says_when_none_is_known(spark, published, client):
    _, config = published
    known = [r["product_id"] for r in publishing.read_current(spark, storage.resolve_tables(config), "product_personas")
             .select("product_id").distinct().orderBy("product_id").limit(2).collect()]
    status, body = client.call("POST", "/cold-start", {"products": known + ["NOPE-1"], "limit": 3})
    assert status == 200
    assert body["unknown_products"] == ["NOPE-1"] and body["matched_products"] == 2
    expected = predict({"where": {"products": known}, "select": ["persona", "$p", "rank"], "limit": 3}, spark, config)
    assert [(p["persona"], p["probability"], p["rank"]) for p in body["personas"]] == \
        [(r["persona"], r["$p"], r["rank"]) for r in expected]
    status, body = client.call("POST", "/cold-start", {"products": ["NOPE-1", "NOPE-2"]})
    assert status == 404 and "none of the products is known" in body["error"] and "NOPE-2" in body["error"]


def test_rerank_matches_the_spark_rerank_and_keeps_base_order_when_ambiguous(spark, published, client):
    _, config = published
    products = [r["product_id"] for r in publishing.read_current(spark, storage.resolve_tables(config), "product_personas")
                .select("product_id").distinct().orderBy("product_id").limit(6).collect()] + ["NOT-A-PRODUCT"]
    base = [0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8]
    for customer in (customers(spark, config, False)[0], customers(spark, config, True, min_personas=0)[0]):
        candidates = [{"product_id": p, "base_score": s} for p, s in zip(products, base)]
        status, body = client.call("POST", "/rerank", {"customer_id": customer, "candidates": candidates})
        assert status == 200
        frame = spark.createDataFrame([(customer, p, s) for p, s in zip(products, base)],
                                      "customer_id string, product_id string, base_score double")
        expected = rerank(frame, publishing.read_current(spark, storage.resolve_tables(config), "persona_affinity"),
                          publishing.read_current(spark, storage.resolve_tables(config), "customer_personas"),
                          publishing.read_current(spark, storage.resolve_tables(config), "product_personas"),
                          config.query.rerank_weight).orderBy("rank").collect()
        assert [c["product_id"] for c in body["candidates"]] == [r["product_id"] for r in expected]
        assert [c["final_score"] for c in body["candidates"]] == \
            pytest.approx([r["final_score"] for r in expected], abs=1e-12)
        if body["is_ambiguous"]:
            assert not body["conditioned"]
            assert [c["base_score"] for c in body["candidates"]] == sorted(base, reverse=True)
        else:
            assert body["conditioned"]


def test_health_names_the_run_its_versions_and_load_time(spark, published, client):
    _, config = published
    status, body = client.call("GET", "/health")
    run = publishing.latest_complete_run(spark, config)
    assert status == 200 and body["status"] == "ok" and body["cold_start"] == "ok"
    assert body["run_id"] == run["run_id"] and body["table_versions"] == run["table_versions"]
    assert datetime.fromisoformat(body["loaded_at"]) <= datetime.now(timezone.utc)


@pytest.mark.parametrize("query, message", [
    ({"where": {"customer_id": "1"}, "order": "x"}, "query: unknown field(s) ['order']"),
    ({"where": {"customer_id": "1"}, "limit": "3"}, "query.limit: expected a positive integer, got '3'"),
    ({"where": {"customer_id": "1"}, "select": ["$q"]}, "query.select: unknown column(s) ['$q']"),
    ({"where": {"products": "85123A"}}, "query.where.products: expected a list of product ids"),
    ({"where": {}}, "query.where: expected an object with customer_id and/or products"),
    ([1, 2], "query: expected a JSON object"),
])
def test_an_invalid_query_is_a_400_with_the_validation_message(client, query, message):
    status, body = client.call("POST", "/query", query)
    assert status == 400 and set(body) == {"error"} and body["error"].startswith(message)


@pytest.mark.parametrize("path, body, message", [
    ("/cold-start", {"products": []}, "cold-start.products: expected a non-empty list"),
    ("/cold-start", {"products": ["A"], "limit": 0}, "cold-start.limit: expected a positive integer"),
    ("/rerank", {"customer_id": "1", "candidates": [{"product_id": "A", "base_score": "high"}]},
     "rerank.candidates[0].base_score: expected a number"),
    ("/rerank", {"customer_id": "1", "candidates": []}, "rerank.candidates: expected a non-empty list"),
    ("/rerank", {"customer_id": "1", "candidates": [{"product_id": "A", "base_score": 1}], "weight": 2},
     "rerank.weight: expected a number in [0, 1]"),
])
def test_invalid_cold_start_and_rerank_bodies_are_400s_naming_the_field(client, path, body, message):
    status, answer = client.call("POST", path, body)
    assert status == 400 and answer["error"].startswith(message)


def test_empty_bad_json_and_oversized_bodies(client, published):
    _, config = published
    assert client.call("POST", "/query", raw=b"") == (400, {"error": "empty body: expected a JSON object"})
    status, body = client.call("POST", "/query", raw=b"{not json")
    assert status == 400 and body["error"].startswith("query: not valid JSON")
    padding = "x" * (config.serving.max_body_bytes + 1)
    status, body = client.call("POST", "/query", {"where": {"customer_id": padding}})
    assert status == 413 and "over the limit of 65536 bytes" in body["error"]
    status, body = client.call("GET", "/no-such-endpoint")
    assert status == 404 and set(body) == {"error"}
    status, body = client.call("GET", "/query")
    assert status == 405 and set(body) == {"error"}


def test_the_api_key_is_required_when_configured(published, tmp_path):
    conf, config = published
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text(yaml.safe_dump({"base": str(conf), "serving": {"api_key_env": "PERSONAS_TEST_API_KEY"}}))
    running = Server(keyed, config.workdir_path, env={"PERSONAS_TEST_API_KEY": "s3cret"})
    try:
        anonymous, wrong, right = Client(running.port), Client(running.port, {"X-API-Key": "guess"}), \
            Client(running.port, {"X-API-Key": "s3cret"})
        assert anonymous.call("GET", "/health") == (401, {"error": "missing or wrong X-API-Key"})
        assert wrong.call("GET", "/health")[0] == 401
        assert right.call("GET", "/health")[0] == 200
    finally:
        running.stop()


def test_serve_refuses_a_configured_key_variable_that_is_unset(published, tmp_path):
    conf, config = published
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text(yaml.safe_dump({"base": str(conf), "serving": {"api_key_env": "PERSONAS_UNSET_KEY"}}))
    result = subprocess.run([str(PERSONAS), "serve", "--conf", str(keyed), "--workdir", str(config.workdir_path),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "PERSONAS_UNSET_KEY"})
    assert result.returncode == 3 and "PERSONAS_UNSET_KEY is not set" in result.stderr


def publish_reversed_run(spark, config) -> str:
    """A second complete run whose answers differ from the first for every customer with two or
    more personas (ranks and published personas reversed), committed through the runs table."""
    first = publishing.latest_complete_run(spark, config)
    run_id = "reversed-" + first["run_id"]
    affinity = publishing.read_current(spark, storage.resolve_tables(config), "persona_affinity")
    summary = publishing.read_current(spark, storage.resolve_tables(config), "customer_personas")
    reversed_rank = F.row_number().over(Window.partitionBy("customer_id").orderBy(F.desc("rank"))).cast("int")
    versions = {"product_personas": first["table_versions"]["product_personas"]}
    for key, frame, schema in (
            ("persona_affinity", affinity.withColumn("rank", reversed_rank), contracts.PERSONA_AFFINITY),
            ("customer_personas", summary.withColumn("personas", F.reverse("personas")), contracts.CUSTOMER_PERSONAS)):
        ref = storage.resolve_tables(config).get(key)
        storage.overwrite(frame.withColumn("run_id", F.lit(run_id)).localCheckpoint(), ref, schema)
        versions[key] = ref.version(spark)
    tracking.configure(config)
    from mlflow import MlflowClient

    registry = MlflowClient()
    model = registry.get_model_version_by_alias(config.tracking.registered_model, run_alias(first["run_id"]))
    registry.set_registered_model_alias(config.tracking.registered_model, run_alias(run_id), model.version)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    publishing.record_run(spark, storage.resolve_tables(config).runs, run_id, "complete", now, now + timedelta(seconds=1), versions)
    return run_id


def test_a_new_run_is_switched_to_atomically_under_concurrent_requests(spark, published, server):
    _, config = published
    watched = customers(spark, config, False)[:3] + customers(spark, config, True)[:2]
    before = Client(server.port)
    first = {c: before.call("GET", f"/customers/{c}/personas")[1] for c in watched}
    first_run = first[watched[0]]["run_id"]
    seen, failures, stop = [], [], threading.Event()

    def hammer():
        connection = Client(server.port)
        while not stop.is_set():
            for customer in watched:
                status, body = connection.call("GET", f"/customers/{customer}/personas")
                (seen if status == 200 else failures).append((customer, status, body))
        connection.close()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    before.close()
    try:
        second_run = publish_reversed_run(spark, config)
        after = Client(server.port)  # a new connection: an idle one is closed after the keep-alive timeout
        deadline = time.monotonic() + 60
        while after.call("GET", "/health")[1]["run_id"] != second_run and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    second = {c: after.call("GET", f"/customers/{c}/personas")[1] for c in watched}
    assert second[watched[0]]["run_id"] == second_run
    assert all(first[c]["personas"] != second[c]["personas"] for c in watched)
    expected = {first_run: first, second_run: second}
    assert not failures
    runs_seen = {body["run_id"] for _, _, body in seen}
    assert runs_seen == {first_run, second_run}
    assert all(body == expected[body["run_id"]][customer] for customer, _, body in seen)


def test_a_forgotten_customer_disappears_within_5_seconds_without_a_new_run(spark, published, server):
    from persona_lib.forget import forget_customers

    _, config = published
    connection = Client(server.port)
    other, customer = customers(spark, config, False)[:2]
    assert connection.call("GET", f"/customers/{customer}/personas")[0] == 200
    connection.close()
    forget_customers(spark, config, [customer], recompute=False)
    forgotten_at = time.monotonic()
    connection = Client(server.port)  # the old one idled past the keep-alive timeout during forget
    while connection.call("GET", f"/customers/{customer}/personas")[0] != 404:
        assert time.monotonic() - forgotten_at < 5, "still served 5 s after personas forget"
        time.sleep(0.05)
    assert connection.call("POST", "/query", {"where": {"customer_id": customer}})[0] == 404
    health = connection.call("GET", "/health")[1]
    # forget --no-recompute commits a runs row of its own at the post-deletion versions,
    # which the service may switch to; no pipeline run is needed for the customer to disappear.
    assert health["forgotten"] >= 1
    assert connection.call("GET", f"/customers/{other}/personas")[0] == 200


def test_a_table_with_deletion_vectors_and_v2_checkpoints_is_refused_naming_the_features(spark, config):
    """What Databricks turns on by default: deletion vectors and v2 checkpoints. deltalake 1.6.6
    cannot read either, so the service must say so (table, reader version, features) and
    ``personas serve`` must exit 4, never answer from a table it would misread."""
    from persona_lib import serving
    from persona_lib.errors import DependencyError

    path = str(config.workdir_path / "tables" / "dv_table")
    (spark.range(0, 200).selectExpr("cast(id AS string) AS customer_id", "id % 7 AS bucket")
     .write.format("delta").option("delta.enableDeletionVectors", "true")
     .option("delta.checkpointPolicy", "v2").save(path))
    spark.sql(f"DELETE FROM delta.`{path}` WHERE bucket = 0")
    features = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["tableFeatures"]
    assert {"deletionVectors", "v2Checkpoint"} <= set(features)
    with pytest.raises(DependencyError) as refused:
        serving.read_arrow(storage.TableRef("persona_affinity", path, is_catalog=False), ["customer_id"])
    message = str(refused.value)
    assert message.startswith("persona_affinity (") and "deltalake 1.6.6" in message
    assert "deletionVectors" in message and "v2Checkpoint" in message
    conf = config.workdir_path.parent / "dv.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "tables": {"runs": path}}))
    result = subprocess.run([str(PERSONAS), "serve", "--conf", str(conf), "--workdir", str(config.workdir_path),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 4 and "runs (" in result.stderr and "deletionVectors" in result.stderr


def test_serve_refuses_catalog_tables_it_cannot_read_without_a_metastore(tmp_path):
    conf = tmp_path / "catalog.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "tables": {"runs": "main.personas.runs"}}))
    result = subprocess.run([str(PERSONAS), "serve", "--conf", str(conf), "--workdir", str(tmp_path / "work"),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert "tables.runs: 'main.personas.runs' is a catalog table" in result.stderr
