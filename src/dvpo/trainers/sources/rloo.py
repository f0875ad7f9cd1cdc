"""RLOO (Ahmadian et al. 2024; TRL's RLOOTrainer): k samples per prompt, each one's baseline the mean
reward of the other k - 1. As in TRL, the KL penalty is part of that reward (r − β·Σ_t KL_t) before the
baseline is taken, and the advantage is given to every token of the response."""

from __future__ import annotations

from typing import ClassVar

import torch

from dvpo.algos.advantages import broadcast_sequence_advantage, leave_one_out_advantages
from dvpo.errors import ConfigError
from dvpo.rollout.experience import Advantages, Rollout, unpadded_rows
from dvpo.trainers.sources.base import RewardSource
from dvpo.trainers.sources.scoring import SequenceScorer


class RlooSource(RewardSource):
    name: ClassVar[str] = "rloo"

    def __init__(self, scorer: SequenceScorer, group_size: int):
        self.scorer, self.group_size = scorer, group_size

    @staticmethod
    def samples_per_prompt(cfg) -> int:
        return cfg.group_size

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if cfg.group_size < 2:
            raise ConfigError(f"--algo rloo needs --group-size of at least 2 (each sample's baseline is the others' "
                              f"mean), got {cfg.group_size}")

    @classmethod
    def build(cls, cfg, device, policy, reference, tokenizer):
        scorer = SequenceScorer.from_config(cfg, device, tokenizer)
        return cls(scorer, cfg.group_size), reference

    @torch.no_grad()
    def advantages(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Advantages:
        mask = rollout.seq.response_mask
        scores = self.scorer(unpadded_rows(rollout.seq), rollout.prompts, rollout.texts,
                             rollout.columns).to(mask.device)
        rewards = scores - kl_coef * (kl * mask).sum(dim=1)
        advantages = leave_one_out_advantages(rewards, self.group_size)
        return Advantages(broadcast_sequence_advantage(advantages, mask), {"proxy_score": scores.mean().item()})
