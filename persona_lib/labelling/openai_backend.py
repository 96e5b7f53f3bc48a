"""The openai labeller: any OpenAI-compatible chat endpoint (``vllm serve``, OpenAI, ...).

Requests go out from the Spark Python workers (``mapInPandas``), at most
``labelling.openai.concurrency`` at a time per task, each with a timeout; a timeout, a
connection error, HTTP 429 or a 5xx answer is retried up to ``max_retries`` times with
exponential backoff (backoff_s, 2 x backoff_s, ...), any other HTTP error is final. A request
that still fails becomes that customer's ``failed`` status with the reason; the batch goes on.
The answer schema is sent as OpenAI's ``response_format`` json_schema or as vLLM's
``structured_outputs`` field (``structured_output_field``); vLLM silently ignores the old
``guided_*`` fields, so they are never used. The API key is read on the worker from the
environment variable named by ``api_key_env`` (never stored in config or tables).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from persona_lib.config import OpenAIConfig
from persona_lib.errors import ConfigError
from persona_lib.labelling.answers import ANSWERS
from persona_lib.labelling.validation import answer_json_schema
from persona_lib.prompts import PromptTemplate
from persona_lib.taxonomy import Taxonomy

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
ERROR_BODY_CHARS = 200


@dataclasses.dataclass(frozen=True)
class Completion:
    text: Optional[str]
    error: Optional[str]
    prompt_tokens: Optional[int] = None
    generated_tokens: Optional[int] = None
    cached_tokens: Optional[int] = None


class OpenAILabeler:
    name = "openai"

    def __init__(self, openai: OpenAIConfig, taxonomy: Taxonomy, template: PromptTemplate):
        if not openai.model:
            raise ConfigError("labelling.openai.model: name the served model")
        if openai.structured_output_field not in ("response_format", "structured_outputs"):
            raise ConfigError("labelling.openai.structured_output_field: 'response_format' or "
                              f"'structured_outputs', got {openai.structured_output_field!r}")
        self.openai = openai
        self.schema = answer_json_schema(taxonomy)
        self.template = template
        self.source = f"openai:{openai.model}"

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        openai, schema, template = self.openai, self.schema, self.template

        def label_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            api_key = os.environ.get(openai.api_key_env, "")
            with ThreadPoolExecutor(max_workers=max(1, openai.concurrency)) as pool:
                for frame in batches:
                    bodies = [request_body(openai, schema, template.messages(s)) for s in frame["prompt_suffix"]]
                    completions = list(pool.map(lambda body: complete(openai, api_key, body), bodies))
                    yield pd.DataFrame({
                        "customer_id": frame["customer_id"].tolist(),
                        "raw_response": [c.text for c in completions],
                        "error": [c.error for c in completions],
                        "batch_id": [None] * len(completions),
                        "prompt_tokens": pd.array([c.prompt_tokens for c in completions], dtype="Int32"),
                        "generated_tokens": pd.array([c.generated_tokens for c in completions], dtype="Int32"),
                        "cached_tokens": pd.array([c.cached_tokens for c in completions], dtype="Int32"),
                    })

        return prompts.mapInPandas(label_partition, ANSWERS)


def request_body(openai: OpenAIConfig, schema: dict, messages: list[dict]) -> dict:
    body = {"model": openai.model, "messages": messages, "temperature": openai.temperature,
            "max_tokens": openai.max_tokens}
    if openai.seed is not None:
        body["seed"] = openai.seed
    if openai.structured_output_field == "structured_outputs":
        body["structured_outputs"] = {"json": schema}
    else:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "personas", "schema": schema, "strict": True}}
    return body


def complete(openai: OpenAIConfig, api_key: str, body: dict) -> Completion:
    """One chat completion with timeout and retries; never raises for a per-request failure."""
    url = openai.base_url.rstrip("/") + "/chat/completions"
    data = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last_error = "not sent"
    attempts = openai.max_retries + 1
    for attempt in range(attempts):
        if attempt:
            time.sleep(openai.backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=openai.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:ERROR_BODY_CHARS]
            last_error = f"HTTP {exc.code}: {detail}"
            if exc.code not in RETRY_STATUS:
                return Completion(None, last_error)
            continue
        except (socket.timeout, TimeoutError) as exc:
            last_error = f"timeout after {openai.timeout_s:g} s ({exc})"
            continue
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            last_error = f"{'timeout' if isinstance(reason, (socket.timeout, TimeoutError)) else 'connection error'}: {reason}"
            continue
        except json.JSONDecodeError as exc:
            return Completion(None, f"endpoint answered non-JSON: {exc}")
        return _parse_completion(payload, openai)
    return Completion(None, f"{last_error} (after {attempts} attempts)")


def _parse_completion(payload: dict, openai: OpenAIConfig) -> Completion:
    try:
        choice = payload["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return Completion(None, f"unexpected response shape: {json.dumps(payload)[:ERROR_BODY_CHARS]}")
    usage = payload.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    error = f"answer cut at max_tokens {openai.max_tokens}" if choice.get("finish_reason") == "length" else None
    return Completion(text, error, usage.get("prompt_tokens"), usage.get("completion_tokens"), cached)
