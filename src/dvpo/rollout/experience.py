"""From a sampled batch to what one RL step learns from: sequences, per-token log-probs, and the `Experience`.

A sequence is `[left-padded prompt ; right-padded response]`. Position ids are computed from
the attention mask, so a left-padded row gets the same positions as during generation and the
training forward reproduces the sampling log-probs. `ExperienceMaker` turns a `Rollout` into one
`Experience` (as OpenRLHF's experience maker does): the algorithm's advantage source adds only its
`Advantages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dvpo.algos.ppo import entropy_from_logits, kl_k1, logprobs_from_logits
from dvpo.distributed import BatchStats
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

    def trimmed(self) -> "Sequences":
        """The same rows without the columns that are padding in every row: left of the longest prompt, right
        of the longest response. Positions come along, so each row's outputs are unchanged."""
        start = self.prompt_width - int(self.attention_mask[:, : self.prompt_width].sum(dim=1).max())
        width = max(int(self.response_mask.sum(dim=1).max()), 1)
        end = self.prompt_width + width
        return Sequences(self.input_ids[:, start:end], self.attention_mask[:, start:end],
                         self.position_ids[:, start:end], self.response_ids[:, :width],
                         self.response_mask[:, :width], self.prompt_width - start)


def length_sorted_chunks(lengths: torch.Tensor, rows: int) -> list[torch.Tensor]:
    """Row indices, longest first, in chunks of `rows`: each chunk is then padded only to its own longest row."""
    return list(torch.argsort(lengths, descending=True, stable=True).split(rows))


def _padded_to(values: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))


def clipped_rows(response_ids: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """[B] bool: rows whose response holds no EOS, so generation stopped at `max_new_tokens` and cut them (the
    `clipped_ratio` that verl and TRL log). A response cut so is scored and trained on as if it were whole."""
    ended = ((response_ids == eos_token_id) & response_mask.bool()).any(dim=1)
    return ~ended


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
    """Log-probs [B, R] of the response tokens under `model` at the sampling temperature; optionally the entropy.

    The forward reads `seq` without its all-padding columns (`Sequences.trimmed`). Only the
    positions that predict response tokens get logits (`logits_to_keep`): with a large vocabulary
    the [batch, length, vocab] logits are the biggest activation of the step. The entropy is a
    logged metric, not a loss term, so it is computed outside autograd, row by row: inside the
    graph its softmax would stay alive until the backward pass.
    """
    full_width, seq = seq.response_ids.shape[1], seq.trimmed()
    width = seq.response_ids.shape[1]
    logits = model(input_ids=seq.input_ids, attention_mask=seq.attention_mask, position_ids=seq.position_ids,
                   use_cache=False, logits_to_keep=width + 1).logits[:, :-1]
    logits = logits.float()
    logprobs = _padded_to(logprobs_from_logits(logits, seq.response_ids, temperature) * seq.response_mask, full_width)
    if not with_entropy:
        return logprobs
    with torch.no_grad():
        entropy = torch.cat([entropy_from_logits(row / temperature) for row in logits.detach().split(1)])
    return logprobs, _padded_to(entropy * seq.response_mask, full_width)


@torch.no_grad()
def frozen_logprobs(model, seq: Sequences, temperature: float, rows: int) -> torch.Tensor:
    """`response_logprobs` without gradients, `rows` sequences at a time (the experience forwards).

    Only one chunk's [rows, length, vocab] logits and their float32 temporaries are alive at once,
    so with a large vocabulary the experience phase needs no more memory than a minibatch of
    the update (verl's log-prob micro-batches, OpenRLHF's micro rollout batches). The chunks
    group rows of similar length, so each is padded only to its own longest row.
    """
    out = torch.zeros(seq.response_mask.shape, device=seq.response_mask.device)
    for index in length_sorted_chunks(seq.attention_mask.sum(dim=1), rows):
        out[index] = response_logprobs(model, seq.rows(index), temperature)
    return out


def critic_values(critic, seq: Sequences) -> torch.Tensor:
    """V(s_t) [B, R] for each response token: the critic's output at the position before the token."""
    full_width, seq = seq.response_ids.shape[1], seq.trimmed()
    out = critic(input_ids=seq.input_ids, attention_mask=seq.attention_mask, position_ids=seq.position_ids)
    return _padded_to(out.logits.squeeze(-1)[:, response_hidden_slice(seq)].float() * seq.response_mask, full_width)


def unpadded_rows(seq: Sequences) -> list[tuple[list[int], list[int]]]:
    """Per row: (prompt ids without left padding, response ids without right padding)."""
    rows = []
    for i in range(seq.input_ids.shape[0]):
        prompt = seq.input_ids[i, : seq.prompt_width][seq.attention_mask[i, : seq.prompt_width].bool()]
        response = seq.response_ids[i][seq.response_mask[i].bool()]
        rows.append((prompt.tolist(), response.tolist()))
    return rows


@dataclass
class Rollout:
    """This process's share of a rollout batch, with what a source may need of the whole batch."""

    seq: Sequences
    prompts: list                 # this process's rows
    texts: list[str]
    all_prompts: list             # every row of the global batch, on every process
    all_texts: list[str]
    offset: int                   # index of this process's first row in the global batch
    stats: BatchStats = field(default_factory=BatchStats)
    columns: list[dict] = field(default_factory=list)  # this process's rows' other prompt-file fields (reward fns)
    seed: int = 0                 # of the step's own random choices (DVPO's tau), the same on every process


@dataclass
class Advantages:
    """What an advantage source adds to a step's experience."""

    advantages: torch.Tensor                      # [B, R]
    metrics: dict = field(default_factory=dict)
    old_values: torch.Tensor | None = None        # a trained critic's values at rollout time
    returns: torch.Tensor | None = None
    mask: torch.Tensor | None = None              # [B, R] the tokens the advantages cover (None: every response
                                                  # token); DVPO's GVM values no token cut beyond its max_length


@dataclass
class Experience:
    """Everything the update of one step reads: the sequences and their response mask, the old and the
    reference log-probs, the per-token KL (k1), the source's advantages (and a critic's values and returns),
    and the step's experience metrics. `rows` slices one minibatch."""

    seq: Sequences
    old_logp: torch.Tensor                        # [B, R]
    ref_logp: torch.Tensor                        # [B, R]
    kl: torch.Tensor                              # [B, R], k1 on response tokens
    advantages: torch.Tensor                      # [B, R]
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.seq.response_mask

    def rows(self, index: torch.Tensor) -> "Experience":
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Experience(self.seq.rows(index), self.old_logp[index], self.ref_logp[index], self.kl[index],
                          self.advantages[index], pick(self.old_values), pick(self.returns))


class ExperienceMaker:
    """The experience phase of a step: old and reference log-probs, per-token KL, the source's advantages,
    whitened over the whole batch when asked (over the tokens they cover: cut tokens keep no advantage and
    no share of the statistics).

    With one update per step (`one_update`) the update is on-policy: the update's own forward, detached,
    gives the old log-probs (as TRL's GRPO does), which saves one forward pass of the policy; that
    forward, with its graph, is returned beside the experience for the update to reuse.
    """

    def __init__(self, policy, reference, source, stats: BatchStats, temperature: float, rows: int,
                 whiten: bool, one_update: bool, unwrap=lambda model: model):
        self.policy, self.reference, self.source, self.stats = policy, reference, source, stats
        self.temperature, self.rows, self.whiten, self.one_update = temperature, rows, whiten, one_update
        self.unwrap = unwrap

    def make(self, rollout: Rollout, kl_coef: float) -> tuple[Experience, tuple | None]:
        """`kl_coef`: the β of the reward's KL penalty, 0 when the run puts the KL in the loss."""
        seq = rollout.seq
        live = None
        if self.one_update:
            self.policy.train()
            live = response_logprobs(self.policy, seq, self.temperature, with_entropy=True)
            old_logp = live[0].detach()
        else:
            old_logp = frozen_logprobs(self.unwrap(self.policy), seq, self.temperature, self.rows)
        ref_logp = frozen_logprobs(self.reference, seq, self.temperature, self.rows)
        kl = kl_k1(old_logp, ref_logp) * seq.response_mask
        added = self.source.advantages(rollout, kl, kl_coef)
        covered = seq.response_mask if added.mask is None else added.mask
        advantages = self.stats.masked_whiten(added.advantages, covered) if self.whiten else added.advantages
        return Experience(seq, old_logp, ref_logp, kl, advantages, added.old_values, added.returns,
                          added.metrics), live
