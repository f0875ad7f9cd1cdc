"""The pairwise preference loss of reward modelling: ``-log sigmoid(s_chosen - s_rejected)`` (Bradley & Terry
1952; Ouyang et al. 2022; TRL ``RewardTrainer``). DPO is TRL's ``DPOTrainer`` (`dvpo.trainers.dpo`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bradley_terry_loss"]


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
