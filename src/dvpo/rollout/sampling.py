"""Batched sampling with the KV cache and left padding, shared by `dvpo generate` and RL rollouts.

With a `noise_seed`, a token is drawn as argmax(filtered logits / T + Gumbel noise), which is an
exact draw from the same categorical distribution (the Gumbel-max trick), with the noise of
every row of the *global* batch drawn from one generator seeded per call and this process's rows
sliced out. The samples then depend on the seed and the row, not on how the batch is split
over processes or into generation batches: 1 and N processes draw the same responses. The
price is noise for the global batch's rows at every decoding step (rows x vocabulary floats).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TopPLogitsWarper

from dvpo.errors import ConfigError
from dvpo.data.collate import pad_sequences
from dvpo.data.tokenize import truncate_prompts


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


@torch.no_grad()
def sample(model, prompt_id_lists: list[list[int]], pad_token_id: int, eos_token_id: int,
           max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
           num_samples: int = 1, min_new_tokens: int = 0, noise: SharedNoise | None = None) -> SampledBatch:
    """Sample `num_samples` responses per prompt (rows prompt-major); temperature 0 is greedy.

    Without `noise` the draw uses torch's global generator; with it, see the module docstring
    (row offsets and global rows count sampled rows, i.e. prompts x num_samples).
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
    greedy = temperature <= 0
    shared = noise is not None and not greedy
    processors = LogitsProcessorList([GumbelSampler(noise, len(rows), temperature, top_p, device)]) if shared else None
    output = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=not (greedy or shared),
        temperature=None if greedy or shared else temperature,
        top_p=None if greedy or shared else top_p,
        top_k=None,
        logits_processor=processors,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        use_cache=True,
    )
    responses = output[:, prompt_ids.shape[1]:]
    is_eos = responses == eos_token_id
    # Tokens after the first eos are padding; the eos itself belongs to the response.
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()
    responses = responses.masked_fill(after_eos, pad_token_id)
    return SampledBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=responses,
                        response_mask=response_mask)
