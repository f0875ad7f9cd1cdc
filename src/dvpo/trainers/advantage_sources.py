"""The one place where the RL algorithms differ: where the per-token advantages come from.

Every source takes the same rollout (sequences, per-token KL to the reference) and returns
advantages for the PPO-clip update; PPO also trains its critic in the same step.
- DVPO: the frozen GVM's normalised token values (paper), or their token difference.
- PPO: reward-model score on the last token minus beta*KL per token, GAE over a trained critic
  (gamma 1, lambda 0.95), clipped value loss (the loop whitens its advantages) — the community recipe of
  "The N+ implementation details of RLHF with PPO" (Huang et al. 2024), as in TRL and OpenRLHF.
- ReMax (Li et al. 2023): REINFORCE, baseline = the reward of the greedy response to the prompt.
- GRPO (Shao et al. 2024): G samples per prompt, group-normalised reward; KL as a k3 loss term.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from dvpo.algos.advantages import (broadcast_sequence_advantage, dvpo_critic_advantages, dvpo_difference_advantages,
                                   dvpo_value_advantages, group_normalized_advantages, reliability_weight,
                                   remax_advantages)
from dvpo.algos.ppo import clipped_value_loss, gae, per_token_rewards
from dvpo.config import ConfigError
from dvpo.data.collate import pad_sequences
from dvpo.data.tau import conditioned_on
from dvpo.data.tokenize import TruncationStats, encode_prompt, truncate
from dvpo.rollout.experience import Sequences, build_sequences, critic_values, unpadded_rows
from dvpo.rollout.sampling import sample
from dvpo.distributed import BatchStats
from dvpo.errors import ModelError

logger = logging.getLogger(__name__)


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


@dataclass
class Experience:
    advantages: torch.Tensor                      # [B, R]
    metrics: dict = field(default_factory=dict)
    old_values: torch.Tensor | None = None        # PPO's critic values at rollout time
    returns: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> "Experience":
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Experience(self.advantages[index], {}, pick(self.old_values), pick(self.returns))


def tau_partner(prompts: list, pairs: int = 1) -> list[list[int]]:
    """For each sample, the next `pairs` samples of the batch on other prompts (fewer if the batch lacks them)."""
    n = len(prompts)
    partners = []
    for i in range(n):
        others = [k % n for k in range(i + 1, i + n) if repr(prompts[k % n]) != repr(prompts[i])]
        if not others:
            raise ValueError("DVPO needs at least two distinct prompts per rollout batch to draw tau")
        partners.append(others[:pairs])
    return partners


NEAR_CHANCE = 0.6  # validation pairwise accuracy below which a scorer is mostly noise to a policy that chases it


def warn_if_near_chance(meta, folder: str) -> None:
    """A GVM or reward model that ranks pairs barely better than a coin gives the policy a signal it can only
    exploit (lab 2: a GVM at 55% took DVPO below SFT); say so before the run, whatever the normalisation."""
    if meta.validation_accuracy is not None and meta.validation_accuracy < NEAR_CHANCE:
        logger.warning("%s ranks only %.1f%% of its validation pairs right (near chance): the policy will mostly "
                       "follow its errors; a better scorer (more data, a larger model, more epochs) helps more "
                       "than RL settings", folder, 100 * meta.validation_accuracy)


def signal_weight(meta, folder: str, option: str) -> float:
    """`reliability_weight` of a trained scorer (GVM or reward model) from the validation accuracy it
    was selected by; logged, and a clear error when it was trained without a validation split."""
    if meta.validation_accuracy is None:
        raise ConfigError(f"{folder} records no validation accuracy (trained without a validation split, or by an "
                          f"older dvpo), so its reliability is unknown: retrain it with --validation-fraction above 0, "
                          f"or choose another {option}")
    weight = reliability_weight(meta.validation_accuracy)
    logger.log(logging.WARNING if weight == 0 else logging.INFO,
               "%s: validation pairwise accuracy %.1f%%, so its standardised signal is weighted 2 * accuracy - 1 "
               "= %.3f%s", folder, 100 * meta.validation_accuracy, weight,
               " (at chance: only the KL penalty acts)" if weight == 0 else "")
    return weight


@torch.no_grad()
def reward_scores(reward_model, rows: list[tuple[list[int], list[int]]], normalize: bool = True,
                  weight: float = 1.0) -> torch.Tensor:
    """The reward model's score of each (prompt ids, response ids) row, as a float tensor on the CPU;
    with `normalize`, standardised by the scores' statistics on its training responses: a Bradley-Terry score
    has no unit, and this puts it on the scale of the GVM's values (z-scored training scores), so the KL
    coefficient weighs every algorithm's signal alike; `weight` then scales them (`signal_weight`).

    Rows are cut to the RM's max_length as in its training (`truncate`), with a warning when any is."""
    cut = TruncationStats()
    ids = []
    for prompt, response in rows:
        kept, _, what = truncate(prompt + response, [0] * len(prompt) + [1] * len(response),
                                 reward_model.meta.max_length)
        cut.add(what)
        ids.append(kept)
    if cut.prompt_truncated or cut.response_truncated:
        cut.log("reward model inputs", reward_model.meta.max_length)
    device = reward_model.device
    scores = reward_model.score_ids(pad_sequences(ids, reward_model.tokenizer.pad_token_id).to(device),
                                    pad_sequences([[1] * len(x) for x in ids], 0).to(device))
    scores = reward_model.normalize(scores) if normalize else scores
    return (scores * weight).float().cpu()


class DvpoSource:
    """Advantages from a frozen global value model; nothing is trained here.

    `advantage`: "value" is the paper's normalised token value; "difference" subtracts the previous
    slot's value; "gae" uses the GVM as a frozen critic (its last value is the reward, GAE over its
    values, whitened like PPO's), see `dvpo_critic_advantages`.
    """

    trainable: list = []
    samples_per_prompt = 1

    def __init__(self, gvm, advantage: str, normalization: str, gamma: float, lam: float, kl_in_reward: bool,
                 weight: float = 1.0):
        self.gvm, self.advantage, self.normalization, self.weight = gvm, advantage, normalization, weight
        self.gamma, self.lam, self.kl_in_reward = gamma, lam, kl_in_reward
        self.whiten_default = advantage == "gae"

    def _gvm_inputs(self, rollout: Rollout):
        """[tau; prompt; response] per row; tau is the response to another prompt of the global batch.

        Cut to the GVM's max_length as in GVM training (`truncate`): the conditioned prompt from
        the left (tau first), always keeping its last token (the slot of V(s_1)); a response
        longer than max_length - 1 is cut from the right, so `lengths` is the kept response
        tokens + 1 and the cut-off tokens get no value slot (and no advantage).
        """
        max_length = self.gvm.meta.max_length
        if max_length < 2:
            raise ModelError(f"the GVM's max_length is {max_length}; it needs >= 2 (the last prompt token and at "
                             "least one response token)")
        rows = unpadded_rows(rollout.seq)
        everyone = rollout.all_prompts
        partners = (tau_partner(everyone, self.gvm.meta.tau_pairs)[rollout.offset:rollout.offset + len(rows)]
                    if self.gvm.meta.tau else [[]] * len(rows))
        ids, starts, lengths = [], [], []
        cut = 0
        for i, (_, response) in enumerate(rows):
            pairs = [(everyone[j], rollout.all_texts[j]) for j in partners[i]]
            prompt_ids = encode_prompt(self.gvm.tokenizer, conditioned_on(rollout.prompts[i], pairs))
            if not prompt_ids:
                raise ModelError("the GVM's tokenizer encodes the prompt to no token, so there is no slot for V(s_1)")
            kept = response[: max_length - 1]  # room for at least the last prompt token
            cut += len(kept) < len(response)
            room = max_length - len(kept)      # >= 1
            if len(prompt_ids) > room:  # cut tau first, from the left, as in GVM training
                prompt_ids = prompt_ids[-room:]
            ids.append(prompt_ids + kept)
            starts.append(len(prompt_ids) - 1)
            lengths.append(len(kept) + 1)
        if cut:
            logger.warning("GVM inputs: %d of %d responses longer than the GVM's max_length %d minus the prompt's "
                           "last token cut on the right; their cut-off tokens get no advantage", cut, len(rows),
                           max_length)
        device = self.gvm.device
        return (pad_sequences(ids, self.gvm.tokenizer.pad_token_id).to(device),
                pad_sequences([[1] * len(x) for x in ids], 0).to(device),
                torch.tensor(starts, device=device), torch.tensor(lengths, device=device))

    @torch.no_grad()
    def experience(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Experience:
        values, slots = self.gvm.slot_values(*self._gvm_inputs(rollout), normalized=False)
        mask = rollout.seq.response_mask
        width = mask.shape[1]
        q = torch.zeros_like(mask)
        valued = torch.zeros_like(mask)  # response tokens that have a value slot (all but cut-off ones)
        q[:, : values.shape[1] - 1] = values[:, 1: width + 1].to(mask.device)
        valued[:, : values.shape[1] - 1] = slots[:, 1: width + 1].to(mask.device)
        valued = valued * mask
        q = q * valued
        v_first = values[:, 0].to(mask.device)
        if self.normalization in ("stored", "reliability"):  # reliability: then times `weight`
            mean, std = self.gvm.meta.value_mean, self.gvm.meta.value_std
        elif self.normalization == "none":  # raw values: the units of the z-scored training scores
            mean, std = 0.0, 1.0
        else:  # the rollout batch's own statistics over its response tokens (of every process)
            mean, var, _ = rollout.stats.masked_moments(q, valued)
            std = var.sqrt()
        q_norm = dvpo_value_advantages(q, valued, mode="stored", mean=mean, std=std) * self.weight
        v_first = (v_first - mean) / (std + 1e-8) * self.weight
        penalty = kl_coef * kl if self.kl_in_reward else torch.zeros_like(kl)
        if self.advantage == "gae":
            advantages, _ = dvpo_critic_advantages(q_norm, v_first, valued, penalty, self.gamma, self.lam)
        elif self.advantage == "difference":
            advantages = dvpo_difference_advantages(q_norm, valued, self.gamma, v_first=v_first) - penalty * valued
        else:
            advantages = q_norm - penalty * valued
        batch_mean = lambda x: rollout.stats.masked_moments(x, mask)[0].item()  # noqa: E731 (token mean, all processes)
        return Experience(advantages, {"value_mean": batch_mean(q), "advantage_mean": batch_mean(advantages)})

    def value_loss(self, seq: Sequences, exp: Experience):
        return None, {}


class PpoSource:
    """Reward model on the last token, per-token KL penalty, GAE over a critic trained in the same step."""

    samples_per_prompt = 1
    whiten_default = True

    def __init__(self, reward_model, critic, gamma: float, lam: float, value_clip: float, kl_in_reward: bool,
                 normalize: bool = True, weight: float = 1.0):
        self.reward_model, self.normalize, self.weight = reward_model, normalize, weight
        self.use_critic(critic)
        self.gamma, self.lam, self.value_clip = gamma, lam, value_clip
        self.kl_in_reward = kl_in_reward

    def use_critic(self, critic) -> None:
        """The critic as the loop trains it (wrapped for data parallelism after `accelerator.prepare`)."""
        self.critic, self.trainable = critic, [critic]

    @torch.no_grad()
    def experience(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Experience:
        seq = rollout.seq
        mask = seq.response_mask
        scores = reward_scores(self.reward_model, unpadded_rows(seq), self.normalize, self.weight).to(mask.device)
        values = critic_values(self.critic, seq)
        rewards = per_token_rewards(scores, kl, mask, kl_coef if self.kl_in_reward else 0.0)
        advantages, returns = gae(values, rewards, mask, self.gamma, self.lam)
        return Experience(advantages, {"reward_mean": scores.mean().item(),
                                       "value_mean": rollout.stats.masked_moments(values, mask)[0].item()},
                          old_values=values, returns=returns)

    def value_loss(self, seq: Sequences, exp: Experience):
        values = critic_values(self.critic, seq)
        loss, clip_frac = clipped_value_loss(values, exp.old_values, exp.returns, seq.response_mask, self.value_clip)
        return loss, {"value_loss": loss.item(), "value_clip_frac": float(clip_frac)}


class RemaxSource:
    """REINFORCE with the greedy response's reward as the baseline (one extra greedy rollout per step)."""

    trainable: list = []
    samples_per_prompt = 1
    whiten_default = False

    def __init__(self, reward_model, policy, tokenizer, max_new_tokens: int, kl_in_reward: bool, normalize: bool = True,
                 weight: float = 1.0):
        self.reward_model, self.policy, self.tokenizer = reward_model, policy, tokenizer
        self.normalize, self.weight = normalize, weight
        self.max_new_tokens, self.kl_in_reward = max_new_tokens, kl_in_reward

    @torch.no_grad()
    def experience(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Experience:
        seq = rollout.seq
        rows = unpadded_rows(seq)
        greedy = sample(self.policy, [p for p, _ in rows], self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                        self.max_new_tokens, temperature=0)
        greedy_rows = unpadded_rows(build_sequences(greedy))
        mask = seq.response_mask
        scores = reward_scores(self.reward_model, rows, self.normalize, self.weight).to(mask.device)
        greedy_scores = reward_scores(self.reward_model, greedy_rows, self.normalize, self.weight).to(mask.device)
        advantages = broadcast_sequence_advantage(remax_advantages(scores, greedy_scores), mask)
        if self.kl_in_reward:
            advantages = advantages - kl_coef * kl * mask
        return Experience(advantages, {"reward_mean": scores.mean().item(),
                                       "greedy_reward_mean": greedy_scores.mean().item()})

    def value_loss(self, seq: Sequences, exp: Experience):
        return None, {}


class GrpoSource:
    """Group-normalised rewards of G samples per prompt; the KL enters as a loss term, not here."""

    trainable: list = []
    whiten_default = False

    def __init__(self, reward_model, group_size: int, normalize: bool = True):
        # no reliability weight: the group standardisation below would cancel it
        self.reward_model, self.samples_per_prompt, self.normalize = reward_model, group_size, normalize

    @torch.no_grad()
    def experience(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Experience:
        seq = rollout.seq
        mask = seq.response_mask
        scores = reward_scores(self.reward_model, unpadded_rows(seq), self.normalize).to(mask.device)
        advantages = group_normalized_advantages(scores, self.samples_per_prompt)
        return Experience(broadcast_sequence_advantage(advantages, mask), {"reward_mean": scores.mean().item()})

    def value_loss(self, seq: Sequences, exp: Experience):
        return None, {}
