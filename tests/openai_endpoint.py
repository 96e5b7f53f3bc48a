"""A local OpenAI-compatible chat endpoint for tests: real HTTP on a loopback port, so the
openai backends run their whole client path (requests, retries, timeouts) against it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Sequence

import pytest


def chat_answer(content: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """A chat completion's JSON body whose one choice says ``content``."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    if cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return {"choices": [{"message": {"content": content}, "finish_reason": "stop"}], "usage": usage}


class ChatEndpoint:
    """Per request: the next planned step of ``plan`` (an HTTP status, or "slow": 1 s, then
    200), 200 once the plan is spent, and 500 for a request whose user message contains
    ``fail_when``. A 200 answers ``answer``. Keeps every request body in ``requests``."""

    def __init__(self, answer: dict, plan: Sequence = (), fail_when: Optional[str] = None):
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
                payload = json.dumps(answer if step == 200 else {"error": "busy"}).encode()
                try:
                    self.send_response(step)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

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
    """Makes ``ChatEndpoint``s (same arguments) and closes them after the test."""
    endpoints: list[ChatEndpoint] = []

    def make(answer: dict, **kwargs) -> ChatEndpoint:
        endpoints.append(ChatEndpoint(answer, **kwargs))
        return endpoints[-1]

    yield make
    for endpoint in endpoints:
        endpoint.close()
