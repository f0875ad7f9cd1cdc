"""From a sampled batch to the tensors every algorithm needs: full sequences and per-token log-probs.

A sequence is `[left-padded prompt ; right-padded response]`. Position ids are computed from
the attention mask, so a left-padded row gets the same positions as during generation and the
training forward reproduces the sampling log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dvpo.algos.ppo import entropy_from_logits, logprobs_from_logits
from dvpo.rollout.sampling import SampledBatch


@dataclass
class Sequences:
    input_ids: torch.Tensor       # [B, P+R]
    attention_mask: torch.Tensor  # [B, P+R]
    position_ids: torch.Tensor    # [B, P+R]
    response_ids: torch.Tensor    # [B, R]
    response_mask: torch.Tensor   # [B, R] float
    prompt_width: int             # P

    def rows(self, index: torch.Tensor) -> "Sequences":
        return Sequences(self.input_ids[index], self.attention_mask[index], self.position_ids[index],
                         self.response_ids[index], self.response_mask[index], self.prompt_width)


def build_sequences(batch: SampledBatch) -> Sequences:
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return Sequences(input_ids, attention_mask, position_ids, batch.response_ids, batch.response_mask.float(),
                     batch.prompt_ids.shape[1])


def response_hidden_slice(seq: Sequences) -> slice:
    """Positions whose outputs predict (or value the state before) each response token."""
    return slice(seq.prompt_width - 1, seq.input_ids.shape[1] - 1)


def response_logprobs(model, seq: Sequences, temperature: float, with_entropy: bool = False):
    """Log-probs of the response tokens under `model` at the sampling temperature; optionally the entropy.

    Only the positions that predict response tokens get logits (`logits_to_keep`): with a large
    vocabulary the [batch, length, vocab] logits are the biggest activation of the step. The
    entropy is a logged metric, not a loss term, so it is computed outside autograd, row by row:
    inside the graph its softmax would stay alive until the backward pass.
    """
    width = seq.response_ids.shape[1]
    logits = model(input_ids=seq.input_ids, attention_mask=seq.attention_mask, position_ids=seq.position_ids,
                   use_cache=False, logits_to_keep=width + 1).logits[:, :-1]
    logits = logits.float()
    logprobs = logprobs_from_logits(logits, seq.response_ids, temperature) * seq.response_mask
    if not with_entropy:
        return logprobs
    with torch.no_grad():
        entropy = torch.cat([entropy_from_logits(row / temperature) for row in logits.detach().split(1)])
    return logprobs, entropy * seq.response_mask


@torch.no_grad()
def frozen_logprobs(model, seq: Sequences, temperature: float, rows: int) -> torch.Tensor:
    """`response_logprobs` without gradients, `rows` sequences at a time (the experience forwards).

    Only one chunk's [rows, length, vocab] logits and their float32 temporaries are alive at once,
    so with a large vocabulary the experience phase needs no more memory than a minibatch of
    the update (verl's log-prob micro-batches, OpenRLHF's micro rollout batches).
    """
    chunks = torch.arange(seq.input_ids.shape[0], device=seq.input_ids.device).split(rows)
    return torch.cat([response_logprobs(model, seq.rows(index), temperature) for index in chunks])


def critic_values(critic, seq: Sequences) -> torch.Tensor:
    """V(s_t) for each response token: the critic's output at the position before the token."""
    out = critic(input_ids=seq.input_ids, attention_mask=seq.attention_mask, position_ids=seq.position_ids)
    return out.logits.squeeze(-1)[:, response_hidden_slice(seq)].float() * seq.response_mask


def unpadded_rows(seq: Sequences) -> list[tuple[list[int], list[int]]]:
    """Per row: (prompt ids without left padding, response ids without right padding)."""
    rows = []
    for i in range(seq.input_ids.shape[0]):
        prompt = seq.input_ids[i, : seq.prompt_width][seq.attention_mask[i, : seq.prompt_width].bool()]
        response = seq.response_ids[i][seq.response_mask[i].bool()]
        rows.append((prompt.tolist(), response.tolist()))
    return rows
