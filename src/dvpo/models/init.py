"""`dvpo init`: a locally trained tokenizer plus a freshly initialised Llama of a named size.

The lab trains from scratch, so nothing is downloaded. Sizes: tiny for tests (~1M
parameters), small for the lab demo (fits its CPU time budget), medium (~100M) for
benchmarks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from dvpo.data.formats import load_rows

from dvpo.errors import DataError
from dvpo.models.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

MODEL_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    "small": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
    "medium": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12),
}
TEXT_FIELDS = ("prompt", "completion", "chosen", "rejected")


def _load_text_rows(source: str) -> list[dict]:
    """Rows of any kind: every kind but conversational sft has a prompt; extra fields are kept."""
    try:
        return load_rows(source, "prompts")
    except DataError as error:
        if error.field != "prompt":
            raise
        return load_rows(source, "sft")


def _texts(row: dict):
    for name in (*TEXT_FIELDS, "messages"):
        value = row.get(name)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (m["content"] for m in value)


def init_model(data: list[str], size: str, out: str, vocab_size: int = 1024, max_length: int = 512,
               seed: int = 0) -> Path:
    """Train the tokenizer on every text field of `data` and save tokenizer + random model to `out`."""
    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {', '.join(MODEL_SIZES)}; got {size!r}")
    texts = [text for source in data for row in _load_text_rows(source) for text in _texts(row)]
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **MODEL_SIZES[size],
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None
    )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    (out_dir / "dvpo_init.json").write_text(
        json.dumps({"size": size, "parameters": n_params, "vocab_size": len(tokenizer), "seed": seed,
                    "data": list(data), "texts": len(texts)}, indent=2)
    )
    logger.info("initialised a %s Llama (%.2fM parameters, vocab %d) in %s", size, n_params / 1e6,
                len(tokenizer), out_dir)
    return out_dir


def run_init(cfg) -> Path:
    return init_model(cfg.data, cfg.size, cfg.out, cfg.vocab_size, cfg.max_length, cfg.seed)
