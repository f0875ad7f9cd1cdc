"""`dvpo generate`: sample responses to a prompt file and write {prompt, completion} JSONL."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dvpo.stage_options import GenerateConfig
from dvpo.data.formats import load_rows
from dvpo.data.jsonl import write_jsonl
from dvpo.data.tokenize import encode_prompt, ensure_pad_token
from dvpo.models.loading import default_device, load_causal_lm, load_tokenizer
from dvpo.rollout.sampling import SharedNoise, sample

logger = logging.getLogger(__name__)


def generate_completions(model, tokenizer, prompts: list, cfg: GenerateConfig) -> list[str]:
    """Completions, prompt-major (`num_samples` per prompt), decoded without special tokens."""
    completions: list[str] = []
    for start in tqdm(range(0, len(prompts), cfg.batch_size), desc="generate", unit="batch"):
        chunk = prompts[start:start + cfg.batch_size]
        batch = sample(model, [encode_prompt(tokenizer, p) for p in chunk], tokenizer.pad_token_id,
                       tokenizer.eos_token_id, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.num_samples,
                       noise=SharedNoise(cfg.seed * 1_000_003 + start), engine=cfg.rollout_engine)
        completions += [t.strip() for t in tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)]
    return completions


def run_generate(cfg: GenerateConfig) -> Path:
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    ensure_pad_token(tokenizer)
    model = load_causal_lm(cfg.model, cfg.dtype).to(default_device()).eval()
    rows = load_rows(cfg.prompts, "prompts", split=cfg.split)
    completions = generate_completions(model, tokenizer, [r["prompt"] for r in rows], cfg)
    out_rows = [{"prompt": rows[i // cfg.num_samples]["prompt"], "completion": c, "sample": i % cfg.num_samples}
                for i, c in enumerate(completions)]
    write_jsonl(cfg.out, out_rows)
    logger.info("wrote %d completions for %d prompts to %s", len(out_rows), len(rows), cfg.out)
    return Path(cfg.out)
