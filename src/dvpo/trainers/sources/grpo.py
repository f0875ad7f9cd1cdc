"""GRPO (Shao et al. 2024; TRL's GRPOTrainer): G samples per prompt, each one's reward standardised within
its group and given to every token; the KL enters as β·k3 in the loss, not in the reward."""

from __future__ import annotations

from typing import ClassVar

import torch

from dvpo.algos.advantages import broadcast_sequence_advantage, group_normalized_advantages
from dvpo.rollout.experience import Advantages, Rollout, unpadded_rows
from dvpo.trainers.sources.base import RewardSource
from dvpo.trainers.sources.scoring import SequenceScorer


class GrpoSource(RewardSource):
    name: ClassVar[str] = "grpo"
    kl_in_loss: ClassVar[bool] = True

    def __init__(self, scorer: SequenceScorer, group_size: int):
        self.scorer, self.group_size = scorer, group_size

    @staticmethod
    def samples_per_prompt(cfg) -> int:
        return cfg.group_size

    @classmethod
    def build(cls, cfg, device, policy, reference, tokenizer):
        # no reliability weight: the group standardisation would cancel it
        return cls(SequenceScorer.from_config(cfg, device, tokenizer, weighted=False), cfg.group_size), reference

    @torch.no_grad()
    def advantages(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Advantages:
        mask = rollout.seq.response_mask
        scores = self.scorer(unpadded_rows(rollout.seq), rollout.prompts, rollout.texts,
                             rollout.columns).to(mask.device)
        advantages = group_normalized_advantages(scores, self.group_size)
        return Advantages(broadcast_sequence_advantage(advantages, mask), {"proxy_score": scores.mean().item()})
