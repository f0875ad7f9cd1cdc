"""The one place where DVPO and PPO differ: where the per-token advantages come from.

Both sources take the same rollout (sequences, per-token KL to the reference) and return
advantages for the PPO-clip update; PPO also trains its critic in the same step.
- DVPO: the frozen GVM's normalised token values (paper), or their token difference.
- PPO: reward-model score on the last token minus beta*KL per token, GAE over a trained critic
  (gamma 1, lambda 0.95), whitened advantages, clipped value loss — the community recipe of
  "The N+ implementation details of RLHF with PPO" (Huang et al. 2024), as in TRL and OpenRLHF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dvpo.algos.advantages import dvpo_difference_advantages, dvpo_value_advantages
from dvpo.algos.masked import masked_mean, masked_whiten
from dvpo.algos.ppo import clipped_value_loss, gae, per_token_rewards
from dvpo.data.collate import pad_sequences
from dvpo.data.tau import conditioned_prompt
from dvpo.data.tokenize import encode_prompt
from dvpo.rollout.experience import Sequences, critic_values, unpadded_rows


@dataclass
class Experience:
    advantages: torch.Tensor                      # [B, R]
    metrics: dict = field(default_factory=dict)
    old_values: torch.Tensor | None = None        # PPO's critic values at rollout time
    returns: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> "Experience":
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Experience(self.advantages[index], {}, pick(self.old_values), pick(self.returns))


def tau_partner(prompts: list) -> list[int]:
    """For each sample, another sample of the batch on a different prompt (the next such one)."""
    n = len(prompts)
    partners = []
    for i in range(n):
        j = next((k % n for k in range(i + 1, i + n) if repr(prompts[k % n]) != repr(prompts[i])), None)
        if j is None:
            raise ValueError("DVPO needs at least two distinct prompts per rollout batch to draw tau")
        partners.append(j)
    return partners


class DvpoSource:
    """Advantages from a frozen global value model; nothing is trained here."""

    trainable: list = []

    def __init__(self, gvm, advantage: str, normalization: str, gamma: float, kl_in_reward: bool):
        self.gvm, self.advantage, self.normalization = gvm, advantage, normalization
        self.gamma, self.kl_in_reward = gamma, kl_in_reward

    def _gvm_inputs(self, seq: Sequences, prompts: list, texts: list[str]):
        rows = unpadded_rows(seq)
        partners = tau_partner(prompts) if self.gvm.meta.tau else [None] * len(rows)
        ids, starts, lengths = [], [], []
        for i, (_, response) in enumerate(rows):
            j = partners[i]
            conditioned = conditioned_prompt(prompts[i], prompts[j], texts[j]) if j is not None else prompts[i]
            prompt_ids = encode_prompt(self.gvm.tokenizer, conditioned)
            overflow = len(prompt_ids) + len(response) - self.gvm.meta.max_length
            if overflow > 0:  # cut tau first, from the left, as in GVM training
                prompt_ids = prompt_ids[overflow:]
            ids.append(prompt_ids + response)
            starts.append(len(prompt_ids) - 1)
            lengths.append(len(response) + 1)
        device = self.gvm.device
        return (pad_sequences(ids, self.gvm.tokenizer.pad_token_id).to(device),
                pad_sequences([[1] * len(x) for x in ids], 0).to(device),
                torch.tensor(starts, device=device), torch.tensor(lengths, device=device))

    @torch.no_grad()
    def experience(self, seq: Sequences, prompts: list, texts: list[str], kl: torch.Tensor, kl_coef: float) -> Experience:
        values, _ = self.gvm.slot_values(*self._gvm_inputs(seq, prompts, texts), normalized=False)
        mask = seq.response_mask
        width = mask.shape[1]
        q = torch.zeros_like(mask)
        q[:, : values.shape[1] - 1] = values[:, 1: width + 1].to(mask.device)
        q = q * mask
        v_first = values[:, 0].to(mask.device)
        if self.normalization == "stored":
            q_norm = dvpo_value_advantages(q, mask, mode="stored", mean=self.gvm.meta.value_mean,
                                           std=self.gvm.meta.value_std)
            v_first = (v_first - self.gvm.meta.value_mean) / (self.gvm.meta.value_std + 1e-8)
        else:
            mean, std = masked_mean(q, mask), masked_mean((q - masked_mean(q, mask)) ** 2, mask).sqrt()
            q_norm = dvpo_value_advantages(q, mask, mode="batch")
            v_first = (v_first - mean) / (std + 1e-8)
        if self.advantage == "difference":
            advantages = dvpo_difference_advantages(q_norm, mask, self.gamma, v_first=v_first)
        else:
            advantages = q_norm
        if self.kl_in_reward:
            advantages = advantages - kl_coef * kl * mask
        return Experience(advantages, {"value_mean": masked_mean(q, mask).item(),
                                       "advantage_mean": masked_mean(advantages, mask).item()})

    def value_loss(self, seq: Sequences, exp: Experience):
        return None, {}


class PpoSource:
    """Reward model on the last token, per-token KL penalty, GAE over a critic trained in the same step."""

    def __init__(self, reward_model, critic, gamma: float, lam: float, value_clip: float, whiten: bool,
                 kl_in_reward: bool):
        self.reward_model, self.critic = reward_model, critic
        self.trainable = [critic]
        self.gamma, self.lam, self.value_clip, self.whiten = gamma, lam, value_clip, whiten
        self.kl_in_reward = kl_in_reward

    @torch.no_grad()
    def experience(self, seq: Sequences, prompts: list, texts: list[str], kl: torch.Tensor, kl_coef: float) -> Experience:
        rows = unpadded_rows(seq)
        ids = [p + r for p, r in rows]
        device = self.reward_model.device
        scores = self.reward_model.score_ids(pad_sequences(ids, self.reward_model.tokenizer.pad_token_id).to(device),
                                             pad_sequences([[1] * len(x) for x in ids], 0).to(device))
        mask = seq.response_mask
        scores = scores.to(mask.device).float()
        values = critic_values(self.critic, seq)
        rewards = per_token_rewards(scores, kl, mask, kl_coef if self.kl_in_reward else 0.0)
        advantages, returns = gae(values, rewards, mask, self.gamma, self.lam)
        if self.whiten:
            advantages = masked_whiten(advantages, mask)
        return Experience(advantages, {"reward_mean": scores.mean().item(),
                                       "value_mean": masked_mean(values, mask).item()},
                          old_values=values, returns=returns)

    def value_loss(self, seq: Sequences, exp: Experience):
        values = critic_values(self.critic, seq)
        loss, clip_frac = clipped_value_loss(values, exp.old_values, exp.returns, seq.response_mask, self.value_clip)
        return loss, {"value_loss": loss.item(), "value_clip_frac": float(clip_frac)}
