"""An OpenAI-compatible vLLM server (CPU build) as a subprocess, for the openai labeller's
real-model test and bench: ``python -m vllm.entrypoints.openai.api_server`` (what ``vllm
serve`` runs; the ``vllm`` command belongs to the GPU package's name) on a free local port.

It reports each request's cached prompt tokens (``--enable-prompt-tokens-details``), which
the openai labeller records, and its Prometheus counters (``prefix_cache_hit_rate``) give
vLLM's own prefix-cache hit rate.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model: Path, log_path: Path, dtype: str = "float32", max_model_len: int = 4096,
                kvcache_gib: int = 1, start_timeout_s: float = 300) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT/v1``) of a server on ``model``; stopped on exit.

    A server that exits or is not healthy within ``start_timeout_s`` is a RuntimeError quoting
    the end of its log.
    """
    port = free_port()
    # The CPU build sizes its KV cache from this, not from gpu_memory_utilization.
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(kvcache_gib), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--dtype", dtype, "--enforce-eager", "--max-model-len", str(max_model_len), "--seed", "0",
               "--host", "127.0.0.1", "--port", str(port), "--enable-prompt-tokens-details",
               "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM server on {model} did not start; end of {log_path}:\n"
                                       f"{log_path.read_text()[-3000:]}") from None
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def prefix_cache_hit_rate(base_url: str) -> Optional[float]:
    """vLLM's prefix-cache hits / queries (tokens) since the server started, from ``/metrics``;
    None before any query."""
    metrics_url = base_url.rsplit("/v1", 1)[0] + "/metrics"
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode("utf-8")

    def counter(name: str) -> float:
        return sum(float(value) for value in re.findall(rf"^vllm:{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M))

    queries = counter("prefix_cache_queries")
    return counter("prefix_cache_hits") / queries if queries else None
