"""A tiny random-weight chat model for the vLLM tests: no hub, built in a temp dir in seconds.

A transformers Qwen2 config (hidden size 128, 2 layers), random weights, and a byte-level BPE
tokenizer trained here with ``tokenizers`` on the taxonomy and prompt text (so persona names
are a few tokens each, and any title still encodes), plus a ChatML chat template. Its answers
are noise; the structured-output grammar is what keeps them inside the taxonomy, which is
exactly what the tests prove. Needs torch, transformers and tokenizers (the vLLM venv).
"""

from __future__ import annotations

import json
from pathlib import Path

from persona_lib.prompts import prompt_template
from persona_lib.taxonomy import Taxonomy

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 1024
MAX_POSITIONS = 4096


def build_tiny_model(directory: Path, taxonomy: Taxonomy, seed: int = 0) -> Path:
    """Write config, weights and tokenizer of the tiny model into ``directory``; return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    template = prompt_template(taxonomy, token_budget=1000)
    corpus = [template.system, template.prefix, json.dumps({"personas": list(taxonomy.names)}),
              "<purchases>\nWHITE HANGING HEART T-LIGHT HOLDER, 6 times\n</purchases>"] * 20

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None, model_max_length=MAX_POSITIONS)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None, torch_dtype="float32",
    )
    Qwen2ForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return directory
