"""Sequence-level rewards for the reward-driven sources (PPO, ReMax, GRPO, RLOO): a reward model's score,
plain Python reward functions (TRL's `reward_funcs` convention), or both summed.

A reward model's Bradley-Terry score has no unit, so it is standardised by its stored statistics (and,
with `reliability`, weighted by its validation accuracy); a reward function's value is used as it is,
times its `--reward-weights` entry: it is the user's own scale.
"""

from __future__ import annotations

import logging

import torch

from dvpo.algos.advantages import reliability_weight
from dvpo.data.tokenize import TruncationStats, as_trained
from dvpo.errors import ConfigError
from dvpo.models.tokenizer_match import describe, same_vocabulary
from dvpo.user_functions import RewardFunction

logger = logging.getLogger(__name__)

NEAR_CHANCE = 0.6  # validation pairwise accuracy below which a scorer is mostly noise to a policy that chases it


def warn_if_near_chance(meta, folder: str) -> None:
    """A GVM or reward model that ranks pairs barely better than a coin gives the policy a signal it can only
    exploit (lab 2: a GVM at 55% took DVPO below SFT); say so before the run, whatever the normalisation."""
    if meta.validation_accuracy is not None and meta.validation_accuracy < NEAR_CHANCE:
        logger.warning("%s ranks only %.1f%% of its validation pairs right (near chance): the policy will mostly "
                       "follow its errors; a better scorer (more data, a larger model, more epochs) helps more "
                       "than RL settings", folder, 100 * meta.validation_accuracy)


def signal_weight(meta, folder: str, option: str, use: str = "its standardised signal is weighted",
                  at_chance: str = "only the KL penalty acts") -> float:
    """`reliability_weight` of a trained scorer (GVM or reward model) from the validation accuracy it
    was selected by; logged with what it is used for (`use`) and what a weight of 0 means (`at_chance`), and a
    clear error when it was trained without a validation split."""
    if meta.validation_accuracy is None:
        raise ConfigError(f"{folder} records no validation accuracy (trained without a validation split, or by an "
                          f"older dvpo), so its reliability is unknown: retrain it with --validation-fraction above 0, "
                          f"or choose another {option}")
    weight = reliability_weight(meta.validation_accuracy)
    logger.log(logging.WARNING if weight == 0 else logging.INFO,
               "%s: validation pairwise accuracy %.1f%%, so %s 2 * accuracy - 1 "
               "= %.3f%s", folder, 100 * meta.validation_accuracy, use, weight,
               f" (at chance: {at_chance})" if weight == 0 else "")
    return weight


@torch.no_grad()
def reward_scores(reward_model, rows: list[tuple[list[int], list[int]]], normalize: bool = True,
                  weight: float = 1.0) -> torch.Tensor:
    """The reward model's score of each (prompt ids, response ids) row, as a float tensor on the CPU;
    with `normalize`, standardised by the scores' statistics on its training responses: a Bradley-Terry score
    has no unit, and this puts it on the scale of the GVM's values (z-scored training scores), so the KL
    coefficient weighs every algorithm's signal alike; `weight` then scales them (`signal_weight`).

    A response that stopped at eos is completed with the rest of the chat template's turn end (`as_trained`):
    the reward model pools its score at the last token, which in training came after eos (SmolLM2: a newline).
    Rows are cut to the RM's max_length as in its training (`truncate`), with a warning when any is."""
    cut = TruncationStats()
    ids = []
    for prompt, response in rows:
        response = as_trained(response, reward_model.tokenizer, reward_model.after_eos)
        kept, _, what = reward_model.fit(prompt + response, [0] * len(prompt) + [1] * len(response))
        cut.add(what)
        ids.append(kept)
    if cut.prompt_truncated or cut.response_truncated:
        cut.log("reward model inputs", reward_model.meta.max_length)
    scores = reward_model.score_rows(ids)
    scores = reward_model.normalize(scores) if normalize else scores
    return (scores * weight).float().cpu()


class SequenceScorer:
    """The sequence reward of a reward-driven source: the reward model's score, normalised as
    `--reward-normalization` says, plus the sum of the reward functions times their weights."""

    def __init__(self, reward_model=None, normalize: bool = True, weight: float = 1.0,
                 functions: list[RewardFunction] = (), function_weights: list[float] = (), reencode: bool = False):
        self.reward_model, self.normalize, self.weight = reward_model, normalize, weight
        self.reencode = reencode  # the reward model's tokenizer differs from the policy's: score decoded text
        self.functions = list(functions)
        self.function_weights = list(function_weights) or [1.0] * len(self.functions)

    @classmethod
    def from_config(cls, cfg, device, policy_tokenizer, weighted: bool = True) -> "SequenceScorer":
        """`weighted`: apply the `reliability` weight (GRPO's group standardisation would cancel it). A reward
        model whose tokenizer differs from `policy_tokenizer` scores the decoded responses, re-encoded with its
        own tokenizer and chat template (logged once)."""
        functions = [RewardFunction(spec) for spec in cfg.reward_fn]
        if not cfg.reward_model:
            return cls(functions=functions, function_weights=cfg.reward_weights)
        from dvpo.models.reward_model import load_reward_model

        reward_model = load_reward_model(cfg.reward_model, device=device, dtype=cfg.dtype)
        warn_if_near_chance(reward_model.meta, cfg.reward_model)
        weight = (signal_weight(reward_model.meta, cfg.reward_model, "--reward-normalization")
                  if weighted and cfg.reward_normalization == "reliability" else 1.0)
        reencode = not same_vocabulary(reward_model.tokenizer, policy_tokenizer)
        if reencode:
            logger.info("the reward model %s has another tokenizer, %s, than the policy, %s: it scores the "
                        "decoded responses, re-encoded with its own tokenizer and chat template", cfg.reward_model,
                        describe(reward_model.tokenizer), describe(policy_tokenizer))
        return cls(reward_model, cfg.reward_normalization in ("stored", "reliability"), weight, functions,
                   cfg.reward_weights, reencode)

    def __call__(self, rows: list[tuple[list[int], list[int]]] | None, prompts: list, texts: list[str],
                 columns: list[dict]) -> torch.Tensor:
        """One reward per completion, as a float tensor on the CPU. `rows`: the (prompt ids, response ids) of
        the policy's tokenizer; None (`dvpo rate`, where the sampling models may differ from it), or a reward
        model of another tokenizer, re-encodes the texts with the reward model's own tokenizer."""
        total = torch.zeros(len(texts))
        if self.reward_model is not None:
            if rows is None or self.reencode:
                raw = self.reward_model.score(list(prompts), list(texts))
                scores = self.reward_model.normalize(raw) if self.normalize else raw
                total += (scores * self.weight).float()
            else:
                total += reward_scores(self.reward_model, rows, self.normalize, self.weight)
        for fn, weight in zip(self.functions, self.function_weights):
            total += weight * fn(prompts, texts, columns)
        return total
