"""The vllm labeller: vLLM's offline engine inside the Spark Python workers.

The sample is repartitioned to ``labelling.vllm.num_workers`` partitions (one per GPU; on a
GPU cluster set ``spark.task.resource.gpu.amount`` to 1 so each GPU runs one labelling task
at a time) and fed through ``mapInPandas``. Each worker process builds ONE engine lazily and
keeps it for the tasks it runs after (Python workers are reused): this per-process singleton
is the one piece of module state the code base allows, because an engine costs seconds to
minutes to start and gigabytes to hold. Every partition is sent through ``generate()`` in
batches of ``labelling.vllm.batch_size`` prompts; the JSON schema of the answer (1..k names
of the taxonomy, or ["Unrepresentable"]) is enforced by structured outputs, and prefix
caching serves the shared instructions and persona list once.

Weights come from ``labelling.vllm.model_path``, a local directory (a Unity Catalog volume on
Databricks); the engine never downloads from a hub (HF_HUB_OFFLINE is set).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import uuid
from typing import Any, Iterator, Optional

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from persona_lib.config import AppConfig, VllmConfig
from persona_lib.errors import DependencyError
from persona_lib.labelling.answers import ANSWERS
from persona_lib.labelling.validation import answer_json_schema
from persona_lib.prompts import PromptTemplate
from persona_lib.taxonomy import Taxonomy

# (settings, engine) of this Python process: see the module docstring.
_ENGINE: Optional[tuple["EngineSettings", Any]] = None


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """What the workers need to build the engine and ask it (picklable, no config object)."""

    model_path: str
    dtype: str
    max_model_len: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    enforce_eager: bool
    enable_prefix_caching: bool
    structured_outputs_backend: str
    cpu_kvcache_gib: int
    seed: int
    temperature: float
    max_tokens: int
    batch_size: int


def engine_settings(vllm: VllmConfig, config: AppConfig) -> EngineSettings:
    if not vllm.model_path:
        raise DependencyError("labelling.vllm.model_path is empty: set it to a local directory "
                              "holding the model's weights and tokenizer")
    model_path = config.resolve_path(vllm.model_path)
    if "://" not in vllm.model_path and not (model_path / "config.json").is_file():
        raise DependencyError(f"labelling.vllm.model_path: no model at {model_path} (config.json "
                              f"missing); weights must be on a local path, never a hub name")
    return EngineSettings(
        str(model_path), vllm.dtype, vllm.max_model_len, vllm.tensor_parallel_size,
        vllm.gpu_memory_utilization, vllm.enforce_eager, vllm.enable_prefix_caching,
        vllm.structured_outputs_backend, vllm.cpu_kvcache_gib, vllm.seed, vllm.temperature,
        vllm.max_tokens, vllm.batch_size)


def get_engine(settings: EngineSettings):
    """This process's engine, built on first use (rebuilt only if the settings change)."""
    global _ENGINE
    if _ENGINE is not None and _ENGINE[0] == settings:
        return _ENGINE[1]
    # In-process engine core: no extra process per Spark worker.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # Without this the CPU build claims most of the machine's memory for its KV cache.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from vllm import LLM

    engine = LLM(
        model=settings.model_path, dtype=settings.dtype, max_model_len=settings.max_model_len,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enforce_eager=settings.enforce_eager, enable_prefix_caching=settings.enable_prefix_caching,
        seed=settings.seed,
        structured_outputs_config={"backend": settings.structured_outputs_backend,
                                   "disable_any_whitespace": True},
    )
    _ENGINE = (settings, engine)
    return engine


class VllmLabeler:
    name = "vllm"

    def __init__(self, vllm: VllmConfig, config: AppConfig, taxonomy: Taxonomy, template: PromptTemplate):
        if importlib.util.find_spec("vllm") is None:
            raise DependencyError("the vllm labeller needs the vllm package: on a GPU cluster "
                                  "install requirements/vllm-gpu.txt; on CPU run "
                                  "`bash scripts/install_vllm_cpu.sh .venv`")
        self.settings = engine_settings(vllm, config)
        self.num_workers = max(1, vllm.num_workers)
        self.schema = answer_json_schema(taxonomy)
        self.template = template
        self.source = f"vllm:{vllm.model_path}"

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        settings, schema, template = self.settings, self.schema, self.template

        def label_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            engine = None
            for frame in batches:
                for start in range(0, len(frame), settings.batch_size):
                    if engine is None:
                        engine = get_engine(settings)
                    chunk = frame.iloc[start:start + settings.batch_size]
                    yield generate_answers(engine, settings, schema, template, chunk)

        # One partition per engine (GPU): each task then holds its engine for the whole share.
        return prompts.repartition(self.num_workers).mapInPandas(label_partition, ANSWERS)


def generate_answers(engine, settings: EngineSettings, schema: dict, template: PromptTemplate,
                     chunk: pd.DataFrame) -> pd.DataFrame:
    """One generate() call over a batch of prompts; prompts too long for the model fail alone."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    tokenizer = engine.get_tokenizer()
    texts = [tokenizer.apply_chat_template(template.messages(suffix), tokenize=False,
                                           add_generation_prompt=True)
             for suffix in chunk["prompt_suffix"]]
    lengths = [len(tokenizer.encode(text, add_special_tokens=False)) for text in texts]
    fits = [n + settings.max_tokens <= settings.max_model_len for n in lengths]
    # The seed is the engine's (LLM(seed=...)), not per request: a per-request seed makes
    # vLLM's CPU build fail ("CPU Generator does not use offset") once a batch's prefill is
    # chunked, and the engine seed already makes a run repeatable.
    params = SamplingParams(temperature=settings.temperature, max_tokens=settings.max_tokens,
                            structured_outputs=StructuredOutputsParams(json=schema))
    to_send = [text for text, ok in zip(texts, fits) if ok]
    outputs = iter(engine.generate(to_send, params, use_tqdm=False) if to_send else [])
    batch_id = uuid.uuid4().hex if to_send else None
    rows = []
    for customer_id, length, ok in zip(chunk["customer_id"], lengths, fits):
        if not ok:
            rows.append((customer_id, None, f"prompt too long: {length} tokens + max_tokens "
                         f"{settings.max_tokens} > max_model_len {settings.max_model_len}",
                         None, length, None, None))
            continue
        output = next(outputs)
        completion = output.outputs[0]
        error = (f"answer cut at max_tokens {settings.max_tokens}"
                 if completion.finish_reason == "length" else None)
        rows.append((customer_id, completion.text, error, batch_id, len(output.prompt_token_ids),
                     len(completion.token_ids), output.num_cached_tokens or 0))
    frame = pd.DataFrame(rows, columns=ANSWERS.fieldNames())
    for column in ("prompt_tokens", "generated_tokens", "cached_tokens"):
        frame[column] = frame[column].astype("Int32")
    return frame
