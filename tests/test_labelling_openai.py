"""The openai labeller against a small HTTP server in the test: retries on 5xx with
backoff, timeouts, final 4xx, and a failing customer that does not fail the batch."""

from __future__ import annotations

import dataclasses
import datetime as dt

from persona_lib.config import OpenAIConfig
from persona_lib.labelling import label_customers
from persona_lib.labelling.openai_backend import complete
from tests.openai_endpoint import chat_answer

ANSWER = chat_answer('{"personas": ["Gardening Lover"]}', prompt_tokens=700, completion_tokens=9,
                     cached_tokens=640)


def settings(url, **changes) -> OpenAIConfig:
    return dataclasses.replace(OpenAIConfig(base_url=url, model="m", backoff_s=0.01, timeout_s=5),
                               **changes)


BODY = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}


def test_5xx_and_429_are_retried_with_backoff(endpoint_factory):
    endpoint = endpoint_factory(ANSWER, plan=[503, 429, 502])
    completion = complete(settings(endpoint.url), "", BODY)
    assert completion.text == ANSWER["choices"][0]["message"]["content"]
    assert (completion.prompt_tokens, completion.cached_tokens) == (700, 640)
    assert len(endpoint.requests) == 4


def test_retries_are_bounded_and_the_last_error_is_the_reason(endpoint_factory):
    endpoint = endpoint_factory(ANSWER, plan=[500] * 10)
    completion = complete(settings(endpoint.url, max_retries=2), "", BODY)
    assert completion.text is None
    assert completion.error.startswith("HTTP 500") and "after 3 attempts" in completion.error
    assert len(endpoint.requests) == 3


def test_a_timeout_is_retried_then_reported(endpoint_factory):
    endpoint = endpoint_factory(ANSWER, plan=["slow", "slow"])
    completion = complete(settings(endpoint.url, timeout_s=0.2, max_retries=1), "", BODY)
    assert completion.text is None and "timeout" in completion.error


def test_a_client_error_is_not_retried(endpoint_factory):
    endpoint = endpoint_factory(ANSWER, plan=[400])
    completion = complete(settings(endpoint.url), "", BODY)
    assert completion.error.startswith("HTTP 400")
    assert len(endpoint.requests) == 1


def test_the_request_carries_the_schema_in_the_configured_field(endpoint_factory, spark, config, tables):
    endpoint = endpoint_factory(ANSWER, fail_when="PRODUCT 2-")
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
