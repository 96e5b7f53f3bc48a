"""``personas taxonomy propose`` with the vllm backend: one generate on the driver's engine,
with the tiny random model (its answer is noise, so what is proven is the path: the engine is
built from labelling.vllm, asked once, and a prompt too long for the model is refused)."""

from __future__ import annotations

import dataclasses

import pytest

from persona_lib import taxonomy_propose as tp
from persona_lib.config import REPO_ROOT
from persona_lib.errors import InputError
from persona_lib.taxonomy import load_taxonomy

pytest.importorskip("vllm", reason="the vllm backend tests need the vLLM CPU venv")
pytestmark = pytest.mark.llm


@pytest.fixture(scope="module")
def vllm_config(tmp_path_factory):
    from persona_lib.config import load_config
    from persona_lib.testing import TEST_CONF
    from persona_lib.testing.tiny_model import build_tiny_model

    taxonomy = load_taxonomy(REPO_ROOT / "conf" / "personas" / "online_retail.yaml")
    model = build_tiny_model(tmp_path_factory.mktemp("tiny-model"), taxonomy)
    config = load_config(TEST_CONF, workdir=str(tmp_path_factory.mktemp("work")))
    vllm = dataclasses.replace(config.labelling.vllm, model_path=str(model), dtype="float32",
                               enforce_eager=True, max_model_len=1024, temperature=1.0)
    return config.replace("labelling", vllm=vllm)


def test_vllm_answers_the_proposal_prompt_once_on_the_driver(vllm_config):
    tp.check_backend("vllm", vllm_config)
    prompt = tp.proposal_prompt([tp.Basket("1", ("WHITE HANGING HEART T-LIGHT HOLDER, 6 times",), 0)], "shop")
    answer = tp.ask("vllm", vllm_config, prompt, max_tokens=32)
    assert answer.source == f"vllm:{vllm_config.labelling.vllm.model_path}"
    assert isinstance(answer.text, str)
    # 32 tokens of noise: cut at max_tokens unless the model happened to stop.
    assert answer.error in (None, "answer cut at max_tokens 32")


def test_a_prompt_too_long_for_the_model_is_refused_naming_the_lengths(vllm_config):
    baskets = [tp.Basket(str(c), tuple(f"PRODUCT NUMBER {c}-{i}, 2 times" for i in range(20)), 0)
               for c in range(10)]
    with pytest.raises(InputError, match=r"max_model_len 1024 leaves -?\d+ for the answer: pass fewer --customers"):
        tp.ask("vllm", vllm_config, tp.proposal_prompt(baskets, "shop"), max_tokens=32)
