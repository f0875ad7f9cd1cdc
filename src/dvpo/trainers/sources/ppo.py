"""PPO: the sequence reward on the last token, −β·KL_t on every token, GAE over a critic trained in the
same step with a clipped value loss (the loop whitens the advantages): the community recipe of "The N+
implementation details of RLHF with PPO" (Huang et al. 2024), as in TRL and OpenRLHF."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch

from dvpo.algos.ppo import clipped_value_loss, gae, per_token_rewards
from dvpo.errors import ConfigError
from dvpo.models.reward_model import MODEL_SUBDIR, RM_META, RmMeta, load_reward_model
from dvpo.models.tokenizer_match import same_vocabulary, saved_tokenizer
from dvpo.rollout.experience import Advantages, Experience, Rollout, critic_values, unpadded_rows
from dvpo.trainers.sources.base import RewardSource
from dvpo.trainers.sources.scoring import SequenceScorer

logger = logging.getLogger(__name__)


class PpoSource(RewardSource):
    name: ClassVar[str] = "ppo"
    whiten_default = True

    def __init__(self, scorer: SequenceScorer, critic, gamma: float, lam: float, value_clip: float):
        self.scorer = scorer
        self.use_trained([critic])
        self.gamma, self.lam, self.value_clip = gamma, lam, value_clip

    @classmethod
    def build(cls, cfg, device, policy, reference, tokenizer):
        critic = build_critic(cfg, tokenizer).to(device)
        rank = critic_lora_rank(cfg)
        if rank > 0:
            from dvpo.trainers.common import with_lora

            critic = with_lora(critic, rank, cfg.lora_alpha, 0.0, task_type="TOKEN_CLS")
        return cls(SequenceScorer.from_config(cfg, device, tokenizer), critic, cfg.gamma, cfg.gae_lambda,
                   cfg.value_clip), reference

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if cfg.fsdp and critic_lora_rank(cfg) > 0:
            raise ConfigError("--fsdp shards full-weight training; a LoRA critic (--critic-lora-r, default --lora-r) "
                              "trains small adapters: use DDP, or --critic-lora-r 0")

    def use_trained(self, modules: list) -> None:
        """The critic as the loop trains it (wrapped for data parallelism after `accelerator.prepare`)."""
        [self.critic] = modules
        self.trainable = [self.critic]

    @torch.no_grad()
    def advantages(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Advantages:
        seq = rollout.seq
        mask = seq.response_mask
        scores = self.scorer(unpadded_rows(seq), rollout.prompts, rollout.texts, rollout.columns).to(mask.device)
        values = critic_values(self.critic, seq)
        rewards = per_token_rewards(scores, kl, mask, kl_coef)
        advantages, returns = gae(values, rewards, mask, self.gamma, self.lam)
        return Advantages(advantages, {"proxy_score": scores.mean().item(),
                                       "value_mean": rollout.stats.masked_moments(values, mask)[0].item()},
                          old_values=values, returns=returns)

    def value_loss(self, minibatch: Experience):
        values = critic_values(self.critic, minibatch.seq)
        loss, clip_frac = clipped_value_loss(values, minibatch.old_values, minibatch.returns, minibatch.mask,
                                             self.value_clip)
        return loss, {"value_loss": loss.item(), "value_clip_frac": float(clip_frac)}


def critic_lora_rank(cfg) -> int:
    return cfg.lora_r if cfg.critic_lora_r is None else cfg.critic_lora_r


def build_critic(cfg, policy_tokenizer):
    """PPO's critic: `--critic-init`, else the reward model, backbone and head (N+ details; TRL and OpenRLHF do
    the same), so that its first values are already the reward model's scores of each prefix. A LoRA reward
    model's adapter is merged into its base. The policy, with a zero head, when there is no usable reward model."""
    from dvpo.models.value_model import build_value_model

    if cfg.critic_init:
        return build_value_model(cfg.critic_init, cfg.dtype, fsdp=cfg.fsdp)
    if not reward_model_fits(cfg, policy_tokenizer):
        return build_value_model(cfg.policy, cfg.dtype, fsdp=cfg.fsdp)
    if not RmMeta.load(Path(cfg.reward_model)).lora:
        return build_value_model(str(Path(cfg.reward_model) / MODEL_SUBDIR), cfg.dtype, fsdp=cfg.fsdp)
    if cfg.fsdp:
        logger.info("the critic starts from the policy %s: --fsdp shards it as it loads, before a LoRA reward "
                    "model's adapter could be merged in", cfg.policy)
        return build_value_model(cfg.policy, cfg.dtype, fsdp=True)
    return critic_from_lora_reward_model(cfg.reward_model, cfg.dtype)


def reward_model_fits(cfg, policy_tokenizer) -> bool:
    """Whether the critic can start from the reward model: one trained by `dvpo rm` on the policy's tokenizer
    (a critic values the policy's tokens)."""
    if not cfg.reward_model or not (Path(cfg.reward_model) / RM_META).is_file():
        return False
    rm_tokenizer = saved_tokenizer(cfg.reward_model)
    if rm_tokenizer is not None and not same_vocabulary(rm_tokenizer, policy_tokenizer):
        logger.info("the critic starts from the policy %s: the reward model's tokenizer differs from it", cfg.policy)
        return False
    return True


def critic_from_lora_reward_model(folder: str, dtype: str):
    """A token-value model holding a LoRA reward model's merged weights: the same backbone and `score` head
    (a sequence classifier's head has no bias; the value head's starts at 0)."""
    from dvpo.models.value_model import build_value_model

    reward = load_reward_model(folder, device="cpu", dtype=dtype)
    critic = build_value_model(reward.meta.base_model, dtype)
    missing, unexpected = critic.load_state_dict(reward.model.merge_and_unload().state_dict(), strict=False)
    if unexpected or set(missing) - {"score.bias"}:
        raise ConfigError(f"the reward model {folder} does not fit a value model of its base "
                          f"{reward.meta.base_model}: missing {missing}, unexpected {unexpected}")
    logger.info("the critic starts from the reward model %s (its LoRA adapter merged in)", folder)
    return critic
