"""Batched sampling with the KV cache and left padding, shared by `dvpo generate`, `dvpo rate` and RL rollouts.

Two engines decode: `hf` (transformers' `generate`) and `static` (`static_engine.py`: a pre-allocated
cache and one fixed-shape step, a CUDA graph on a GPU). Both choose each token with the same logits
processors and argmax, so a run's samples do not depend on the engine (up to float32 rounding
of the logits, which can flip a token only where two candidates tie to about 1e-6).

A token is drawn as argmax(filtered logits / T + Gumbel noise), which is an
exact draw from the same categorical distribution (the Gumbel-max trick), with the noise of
every row of the *global* batch drawn from one generator seeded per call and this process's rows
sliced out. The samples then depend on the seed and the row, not on how the batch is split
over processes or into generation batches: 1 and N processes draw the same responses. The
price is noise for the global batch's rows at every decoding step (rows x vocabulary floats).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                          TopPLogitsWarper)

from dvpo.errors import ConfigError
from dvpo.data.collate import pad_sequences
from dvpo.data.tokenize import truncate_prompts
from dvpo.rollout import ROLLOUT_ENGINES
from dvpo.rollout.static_engine import static_decode

# `auto`: the engine measured faster (benchmarks/rollout.py; benchmarks/results/rollout_cpu.md). On CPU the
# static engine is 1.2-2.1x generate from about 4M parameters up and up to 9% slower below (the lab's 1.9M
# model, whose step is per-layer Python, not matrix products). On CUDA it has not been measured yet
# (benchmarks/gpu_check.sh does), so generate stays there.
STATIC_ENGINE_FROM_PARAMETERS = {"cpu": 4_000_000}


@dataclass
class SampledBatch:
    """Prompt and response ids of one batch; responses are right-padded, cut after the first eos."""

    prompt_ids: torch.Tensor      # [B, P], left-padded
    prompt_mask: torch.Tensor     # [B, P]
    response_ids: torch.Tensor    # [B, R], right-padded with pad_token_id
    response_mask: torch.Tensor   # [B, R], 1 on response tokens including the closing eos


@dataclass(frozen=True)
class SharedNoise:
    """Where this process's rows sit in the global batch whose noise one seeded generator draws."""

    seed: int
    row_offset: int = 0
    global_rows: int | None = None  # None: this batch is the whole batch


class GumbelSampler(LogitsProcessor):
    """Turns greedy decoding into sampling at `temperature` with top-p, using the shared noise."""

    def __init__(self, noise: SharedNoise, rows: int, temperature: float, top_p: float, device: torch.device):
        self.rows = slice(noise.row_offset, noise.row_offset + rows)
        self.global_rows = noise.global_rows or rows
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None
        self.generator = torch.Generator(device=device).manual_seed(noise.seed)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        uniform = torch.rand(self.global_rows, scores.shape[1], generator=self.generator, device=scores.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
        return scores + gumbel[self.rows]


def _sharded(model) -> bool:
    """Parameters split over processes (FSDP2's DTensors, DeepSpeed ZeRO-3's partitions)."""
    parameter = next(model.parameters())
    if hasattr(parameter, "ds_id"):
        return True
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(parameter, DTensor)


def resolve_engine(name: str, model) -> str:
    """`auto` resolved for the model's device and size. A model whose parameters are sharded over processes
    decodes with `generate`, whose forward gathers them: the static engine needs whole weights."""
    if name not in ROLLOUT_ENGINES:
        raise ConfigError(f"--rollout-engine must be one of {', '.join(ROLLOUT_ENGINES)}; got {name!r}")
    if _sharded(model):
        if name == "static":
            raise ConfigError("--rollout-engine static needs whole weights on each process; with sharded "
                              "parameters (--fsdp, DeepSpeed ZeRO-3) use hf or auto")
        return "hf"
    if name != "auto":
        return name
    threshold = STATIC_ENGINE_FROM_PARAMETERS.get(next(model.parameters()).device.type)
    return "static" if threshold is not None and sum(p.numel() for p in model.parameters()) >= threshold else "hf"


def token_processors(prompt_width: int, rows: int, eos_token_id: int, temperature: float, top_p: float,
                     min_new_tokens: int, noise: SharedNoise | None, device: torch.device) -> LogitsProcessorList:
    """What turns logits into scores whose argmax is the next token: no eos before `min_new_tokens` (as
    generate's own processor), then temperature, top-p and the shared noise (none when greedy)."""
    processors = LogitsProcessorList()
    if min_new_tokens:
        processors.append(MinNewTokensLengthLogitsProcessor(prompt_width, min_new_tokens, eos_token_id, device))
    if temperature > 0:
        noise = noise or SharedNoise(int(torch.randint(2**62, ())))  # drawn from torch's global generator
        processors.append(GumbelSampler(noise, rows, temperature, top_p, device))
    return processors


@contextmanager
def _plain_generation_config(model):
    """The model's generation_config set aside for one call: `generate` fills what a call leaves unset from it,
    so its rules (Qwen's instruct models carry a repetition penalty; others suppress or force tokens) would
    make rollouts off-policy, since RL's log-probs are the policy's own distribution."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved, target.generation_config = target.generation_config, GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


def _hf_decode(model, prompt_ids, prompt_mask, max_new_tokens, processors, eos_token_id, pad_token_id):
    """transformers' `generate`, choosing by `processors` alone, as the static engine does."""
    with _plain_generation_config(model):
        output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=False,
                                logits_processor=processors, max_new_tokens=max_new_tokens,
                                pad_token_id=pad_token_id, eos_token_id=eos_token_id, use_cache=True)
    return output[:, prompt_ids.shape[1]:]


DECODERS = {"hf": _hf_decode, "static": static_decode}


@torch.no_grad()
def sample(model, prompt_id_lists: list[list[int]], pad_token_id: int, eos_token_id: int,
           max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
           num_samples: int = 1, min_new_tokens: int = 0, noise: SharedNoise | None = None,
           engine: str = "auto") -> SampledBatch:
    """Sample `num_samples` responses per prompt (rows prompt-major); temperature 0 is greedy.

    Without `noise` the noise's seed is drawn from torch's global generator; with it, see the module
    docstring (row offsets and global rows count sampled rows, i.e. prompts x num_samples). `engine`: auto,
    hf or static (`resolve_engine`).
    """
    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", None)
    if context:  # prompt plus response must fit the model's positions; prompts are cut from the left (logged)
        if max_new_tokens >= context:
            raise ConfigError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's "
                              f"{context} positions")
        prompt_id_lists = truncate_prompts(prompt_id_lists, context - max_new_tokens)
    rows = [p for p in prompt_id_lists for _ in range(num_samples)]  # prompt-major, as generate would expand
    prompt_ids = pad_sequences(rows, pad_token_id, side="left").to(device)
    prompt_mask = pad_sequences([[1] * len(p) for p in rows], 0, side="left").to(device)
    processors = token_processors(prompt_ids.shape[1], len(rows), eos_token_id, temperature, top_p, min_new_tokens,
                                  noise, device)
    decode = DECODERS[resolve_engine(engine, model)]
    responses = decode(model, prompt_ids, prompt_mask, max_new_tokens, processors, eos_token_id, pad_token_id)
    is_eos = responses == eos_token_id
    # Tokens after the first eos are padding; the eos itself belongs to the response.
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()
    responses = responses.masked_fill(after_eos, pad_token_id)
    return SampledBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=responses,
                        response_mask=response_mask)
