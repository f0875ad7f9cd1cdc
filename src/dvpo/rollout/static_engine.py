"""The static rollout engine: a pre-allocated KV cache and one fixed-shape decoding step.

The cache (transformers' `StaticCache`) holds rows x (prompt + max new tokens) positions from the
start, and the attention mask covers all of them (positions not yet written are hidden by the
causal mask), so every decoding step has the same shapes. On a GPU that step is captured once as
a CUDA graph and replayed, which removes the per-kernel launch cost that dominates decoding at
small batch; on a CPU the same step runs eagerly with the linear layers on prepacked oneDNN
weights (`prepacked.py`), which is where the CPU's time goes. The cache and the graph belong to
one call and are freed when it returns, so peak memory does not grow across RL steps.

Tokens are chosen exactly as `generate` chooses them: the same logits processors (minimum new
tokens, then the shared Gumbel noise) and argmax; rows that ended keep receiving the pad token.
"""

from __future__ import annotations

import logging
import weakref

import torch
from transformers import LogitsProcessorList, StaticCache
from transformers.cache_utils import StaticLayer

from dvpo.rollout.prepacked import prepacked_linears

logger = logging.getLogger(__name__)


class _EagerStep:
    """One decoding step: the next-token logits [rows, vocab] of `tokens` at `positions`."""

    def __init__(self, model, cache: StaticCache, attention_mask: torch.Tensor):
        self.model, self.cache, self.attention_mask = model, cache, attention_mask

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tokens, attention_mask=self.attention_mask, position_ids=positions,
                         cache=self.cache, use_cache=True)
        return out.logits[:, -1]


class _GraphedStep(_EagerStep):
    """The same step captured as a CUDA graph: inputs are copied into fixed buffers, then replayed."""

    def __init__(self, model, cache: StaticCache, attention_mask: torch.Tensor, tokens: torch.Tensor,
                 positions: torch.Tensor):
        super().__init__(model, cache, attention_mask)
        self.tokens, self.positions = tokens.clone(), positions.clone()
        written = [layer.cumulative_length.clone() for layer in cache.layers]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up runs, as graph capture requires
            for _ in range(2):
                super().__call__(self.tokens, self.positions)
        torch.cuda.current_stream().wait_stream(side)
        self._rewind(written)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = super().__call__(self.tokens, self.positions)
        self._rewind(written)  # the warm-ups' and the capture's keys are overwritten before they are attended to

    def _rewind(self, written: list[torch.Tensor]) -> None:
        for layer, length in zip(self.cache.layers, written):
            layer.cumulative_length.copy_(length)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.graph.replay()
        return self.logits


_UNCAPTURABLE: weakref.WeakSet = weakref.WeakSet()  # models whose capture failed once: eager from then on


def _decoding_step(model, cache, attention_mask, tokens, positions):
    """A CUDA graph on a GPU, eager elsewhere. Only caches of plain full-attention layers are captured (a
    sliding-window layer chooses its branch from Python state that a graph would freeze), and a model whose
    capture failed once (a forward that syncs with the host) decodes eagerly from then on, with one warning."""
    plain = all(type(layer) is StaticLayer for layer in cache.layers)
    if tokens.device.type != "cuda" or not plain or model in _UNCAPTURABLE:
        return _EagerStep(model, cache, attention_mask)
    try:
        return _GraphedStep(model, cache, attention_mask, tokens, positions)
    except RuntimeError as error:
        logger.warning("static rollout engine: CUDA graph capture failed (%s); this model decodes eagerly", error)
        _UNCAPTURABLE.add(model)
        torch.cuda.synchronize()
        return _EagerStep(model, cache, attention_mask)


@torch.no_grad()
def static_decode(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                  processors: LogitsProcessorList, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Response ids [rows, steps] (right-padded with pad ids after each row's eos) of left-padded prompts;
    stops when every row has ended or after `max_new_tokens`."""
    rows, width = prompt_ids.shape
    if max_new_tokens < 1:
        return prompt_ids.new_empty(rows, 0)
    total = width + max_new_tokens
    cache = StaticCache(config=model.config, max_cache_len=total)
    attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(rows, max_new_tokens)], dim=1)
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # as generate derives them from the mask
    tokens = torch.full((rows, total), pad_token_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
    tokens[:, :width] = prompt_ids
    unfinished = torch.ones(rows, dtype=torch.bool, device=prompt_ids.device)
    with prepacked_linears(model, rows):
        logits = model(input_ids=prompt_ids, attention_mask=attention_mask, position_ids=positions, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        position = positions[:, -1:]
        step = None
        for t in range(max_new_tokens):
            scores = processors(tokens[:, :width + t], logits.float())
            chosen = torch.where(unfinished, scores.argmax(dim=-1), pad_token_id)
            tokens[:, width + t] = chosen
            unfinished &= chosen != eos_token_id
            if t == max_new_tokens - 1 or not unfinished.any():
                break
            position = position + 1
            if step is None:
                step = _decoding_step(model, cache, attention_mask, chosen[:, None], position)
            logits = step(chosen[:, None], position)
    return tokens[:, width:width + t + 1]
