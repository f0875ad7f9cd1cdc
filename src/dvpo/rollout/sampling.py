"""Batched sampling with the KV cache and left padding, shared by `dvpo generate` and RL rollouts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dvpo.data.collate import pad_sequences


@dataclass
class SampledBatch:
    """Prompt and response ids of one batch; responses are right-padded, cut after the first eos."""

    prompt_ids: torch.Tensor      # [B, P], left-padded
    prompt_mask: torch.Tensor     # [B, P]
    response_ids: torch.Tensor    # [B, R], right-padded with pad_token_id
    response_mask: torch.Tensor   # [B, R], 1 on response tokens including the closing eos


@torch.no_grad()
def sample(model, prompt_id_lists: list[list[int]], pad_token_id: int, eos_token_id: int,
           max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
           num_samples: int = 1, min_new_tokens: int = 0) -> SampledBatch:
    """Sample `num_samples` responses per prompt (rows prompt-major); temperature 0 is greedy."""
    device = next(model.parameters()).device
    prompt_ids = pad_sequences(prompt_id_lists, pad_token_id, side="left").to(device)
    prompt_mask = pad_sequences([[1] * len(p) for p in prompt_id_lists], 0, side="left").to(device)
    greedy = temperature <= 0
    output = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None,
        num_return_sequences=num_samples,
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
    return SampledBatch(
        prompt_ids=prompt_ids.repeat_interleave(num_samples, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(num_samples, dim=0),
        response_ids=responses,
        response_mask=response_mask,
    )
