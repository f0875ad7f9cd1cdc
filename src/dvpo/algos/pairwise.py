"""Pairwise preference losses: Bradley-Terry reward modelling and DPO.

- Reward model: ``-log sigmoid(s_chosen - s_rejected)`` (Bradley & Terry 1952;
  Ouyang et al. 2022; TRL ``RewardTrainer``).
- DPO (Rafailov et al. 2023; TRL ``DPOTrainer``, sigmoid loss):
  ``-log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)])`` on sequence
  log-probabilities summed over response tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bradley_terry_loss", "dpo_loss"]


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of ``-log sigmoid(chosen - rejected [- margin])`` over the pairs.

    ``margin`` (optional, per pair) is the Llama-2 style margin TRL's
    ``RewardTrainer`` supports.
    """
    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(f"chosen {tuple(chosen_scores.shape)} and rejected {tuple(rejected_scores.shape)} differ")
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO sigmoid loss (Rafailov et al. 2023) on summed sequence log-probs ``[B]``.

    ``h = (pi_c - ref_c) - (pi_r - ref_r)``;
    ``loss = mean(-(1 - ls) * log sigmoid(beta h) - ls * log sigmoid(-beta h))``
    (``ls = label_smoothing``: conservative DPO, as TRL; 0 gives plain DPO).
    Returns ``(loss, chosen_rewards, rejected_rewards)`` with the implicit rewards
    ``beta * (pi - ref)`` per pair, detached. Reference log-probs are constants.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    ref_c = ref_chosen_logp.detach()
    ref_r = ref_rejected_logp.detach()
    chosen_logratio = policy_chosen_logp - ref_c
    rejected_logratio = policy_rejected_logp - ref_r
    h = beta * (chosen_logratio - rejected_logratio)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    chosen_rewards = (beta * chosen_logratio).detach()
    rejected_rewards = (beta * rejected_logratio).detach()
    return losses.mean(), chosen_rewards, rejected_rewards
