"""The openai labeller against a small HTTP server in the test: retries on 5xx with
backoff, timeouts, final 4xx, and a failing customer that does not fail the batch."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from persona_lib.config import OpenAIConfig
from persona_lib.labelling import label_customers
from persona_lib.labelling.openai_backend import complete

ANSWER = {"choices": [{"message": {"content": '{"personas": ["Gardening Lover"]}'},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 700, "completion_tokens": 9,
                    "prompt_tokens_details": {"cached_tokens": 640}}}


class Endpoint:
    """Per request: the next planned reply (status code, or "slow"), then 200 with ANSWER."""

    def __init__(self, plan=(), fail_when=None):
        self.plan, self.fail_when = list(plan), fail_when
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                step = endpoint.plan.pop(0) if endpoint.plan else 200
                if endpoint.fail_when and endpoint.fail_when in body["messages"][1]["content"]:
                    step = 500
                if step == "slow":
                    time.sleep(1.0)
                    step = 200
                payload = json.dumps(ANSWER if step == 200 else {"error": "busy"}).encode()
                try:
                    self.send_response(step)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint_factory():
    endpoints = []

    def make(**kwargs):
        endpoints.append(Endpoint(**kwargs))
        return endpoints[-1]

    yield make
    for endpoint in endpoints:
        endpoint.close()


def settings(url, **changes) -> OpenAIConfig:
    return dataclasses.replace(OpenAIConfig(base_url=url, model="m", backoff_s=0.01, timeout_s=5),
                               **changes)


BODY = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}


def test_5xx_and_429_are_retried_with_backoff(endpoint_factory):
    endpoint = endpoint_factory(plan=[503, 429, 502])
    completion = complete(settings(endpoint.url), "", BODY)
    assert completion.text == ANSWER["choices"][0]["message"]["content"]
    assert (completion.prompt_tokens, completion.cached_tokens) == (700, 640)
    assert len(endpoint.requests) == 4


def test_retries_are_bounded_and_the_last_error_is_the_reason(endpoint_factory):
    endpoint = endpoint_factory(plan=[500] * 10)
    completion = complete(settings(endpoint.url, max_retries=2), "", BODY)
    assert completion.text is None
    assert completion.error.startswith("HTTP 500") and "after 3 attempts" in completion.error
    assert len(endpoint.requests) == 3


def test_a_timeout_is_retried_then_reported(endpoint_factory):
    endpoint = endpoint_factory(plan=["slow", "slow"])
    completion = complete(settings(endpoint.url, timeout_s=0.2, max_retries=1), "", BODY)
    assert completion.text is None and "timeout" in completion.error


def test_a_client_error_is_not_retried(endpoint_factory):
    endpoint = endpoint_factory(plan=[400])
    completion = complete(settings(endpoint.url), "", BODY)
    assert completion.error.startswith("HTTP 400")
    assert len(endpoint.requests) == 1


def test_the_request_carries_the_schema_in_the_configured_field(endpoint_factory, spark, config, tables):
    endpoint = endpoint_factory(fail_when="PRODUCT 2-")
    openai = settings(endpoint.url, max_retries=1, structured_output_field="structured_outputs")
    config = config.replace("labelling", labeller="openai", openai=openai, max_failure_rate=0.5)
    rows = [(str(c), f"P{c}", f"PRODUCT {c}-0", 1, dt.datetime(2011, 1, 1)) for c in range(3)]
    events = spark.createDataFrame(rows, "customer_id string, product_id string, product_title string, "
                                         "quantity int, event_ts timestamp")
    customers = spark.createDataFrame([(str(c),) for c in range(3)], "customer_id string")
    summary = label_customers(spark, config, tables, customers, events, run_id="o1")
    assert summary["new_statuses"] == {"ok": 2, "repaired": 0, "unrepresentable": 0,
                                       "no_answer": 0, "failed": 1}
    labels = {r["customer_id"]: r for r in tables.persona_labels.read(spark).collect()}
    assert labels["2"]["detail"].startswith("HTTP 500") and labels["0"]["personas"] == ["Gardening Lover"]
    request = endpoint.requests[0]
    assert request["structured_outputs"]["json"]["properties"]["personas"]["anyOf"][0]["maxItems"] == 8
    assert "response_format" not in request and request["seed"] == 0
