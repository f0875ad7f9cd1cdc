"""ReMax (Li et al. 2023): REINFORCE with the reward of the greedy response to the same prompt as the
baseline (one extra greedy rollout per step); −β·KL_t on every token."""

from __future__ import annotations

from typing import ClassVar

import torch

from dvpo.algos.advantages import broadcast_sequence_advantage, remax_advantages
from dvpo.rollout.experience import Advantages, Rollout, build_sequences, unpadded_rows
from dvpo.rollout.sampling import sample
from dvpo.trainers.sources.base import RewardSource
from dvpo.trainers.sources.scoring import SequenceScorer


class RemaxSource(RewardSource):
    name: ClassVar[str] = "remax"

    def __init__(self, scorer: SequenceScorer, policy, tokenizer, max_new_tokens: int, engine: str = "auto"):
        self.scorer, self.policy, self.tokenizer = scorer, policy, tokenizer
        self.max_new_tokens, self.engine = max_new_tokens, engine

    @classmethod
    def build(cls, cfg, device, policy, reference, tokenizer):
        return cls(SequenceScorer.from_config(cfg, device, tokenizer), policy, tokenizer, cfg.max_new_tokens,
                   cfg.rollout_engine), reference

    @torch.no_grad()
    def advantages(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Advantages:
        seq = rollout.seq
        rows = unpadded_rows(seq)
        greedy = build_sequences(sample(self.policy, [p for p, _ in rows], self.tokenizer.pad_token_id,
                                        self.tokenizer.eos_token_id, self.max_new_tokens, temperature=0,
                                        engine=self.engine))
        greedy_texts = [t.strip() for t in self.tokenizer.batch_decode(greedy.response_ids, skip_special_tokens=True)]
        mask = seq.response_mask
        scores = self.scorer(rows, rollout.prompts, rollout.texts, rollout.columns).to(mask.device)
        greedy_scores = self.scorer(unpadded_rows(greedy), rollout.prompts, greedy_texts,
                                    rollout.columns).to(mask.device)
        advantages = broadcast_sequence_advantage(remax_advantages(scores, greedy_scores), mask) - kl_coef * kl * mask
        return Advantages(advantages, {"proxy_score": scores.mean().item(),
                                       "greedy_proxy_score": greedy_scores.mean().item()})
