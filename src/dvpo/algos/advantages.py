"""Advantage sources for the shared online loop (pure functions).

DVPO, PPO, ReMax and GRPO differ in where the advantage comes from:

- DVPO (arXiv 2502.16944, section 3.3): the frozen GVM's normalised value
  ``A_t = (Q_t - mu) / (sigma + eps)``; or, as an option beyond the paper, the
  token difference ``A_t = Q_t - V(s_t)`` with ``V(s_t) = Q_{t-1} / gamma``;
- PPO: GAE on a trained critic (see :func:`dvpo.algos.ppo.gae`);
- ReMax (Li et al. 2023): ``r - r_greedy``, a sequence-level advantage;
- GRPO (Shao et al. 2024, DeepSeekMath): group-normalised sequence rewards.

Token tensors are ``[batch, T]`` over response positions, right-padded, with
``mask`` 1 on real tokens; masked positions of outputs are 0. All outputs are
detached: advantages are constants of the policy loss.
"""

from __future__ import annotations

import torch

from dvpo.algos.masked import _fmask, masked_mean

__all__ = [
    "dvpo_value_advantages",
    "dvpo_difference_advantages",
    "group_normalized_advantages",
    "remax_advantages",
    "broadcast_sequence_advantage",
]


def dvpo_value_advantages(
    q_values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "batch",
    mean: float | torch.Tensor | None = None,
    std: float | torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """DVPO's advantage: the normalised GVM value ``(Q_t - mu) / (sigma + eps)`` (paper eq. after 3).

    - ``mode="batch"``: ``mu``, ``sigma`` are the masked mean and population std of
      ``q_values`` over the valid tokens of this rollout batch;
    - ``mode="stored"``: ``mu``, ``sigma`` are the GVM statistics saved at the
      GVM training stage (``mean`` and ``std`` must be given), so advantages keep
      the scale the GVM was trained with rather than being re-centred per batch.

    Detached; 0 on padding.
    """
    q = q_values.detach()
    m = _fmask(mask, q)
    if mode == "batch":
        if mean is not None or std is not None:
            raise ValueError("mode='batch' computes mean/std from the batch; pass mode='stored' to use given statistics")
        mu = masked_mean(q, m)
        sigma = torch.sqrt(masked_mean((q - mu) ** 2, m))
    elif mode == "stored":
        if mean is None or std is None:
            raise ValueError("mode='stored' needs the stored GVM statistics: pass mean= and std=")
        mu = torch.as_tensor(mean, dtype=q.dtype, device=q.device)
        sigma = torch.as_tensor(std, dtype=q.dtype, device=q.device)
        if bool(sigma < 0):
            raise ValueError(f"std must be non-negative, got {float(sigma)}")
    else:
        raise ValueError(f"unknown mode {mode!r}; choose 'batch' or 'stored'")
    return (q - mu) / (sigma + eps) * m


def dvpo_difference_advantages(
    q_values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    v_first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-level difference advantage ``A_t = Q_t - V(s_t)`` (beyond the paper; DESIGN.md 1).

    Transitions are deterministic (``s_{t+1} = [s_t, a_t]``) and intermediate
    rewards are 0, so ``Q(s_{t-1}, a_{t-1}) = gamma * V(s_t)``: the baseline for
    token ``t > 1`` is ``Q_{t-1} / gamma``. For the first response token the baseline
    is ``v_first`` (``[B]``, the GVM output at the last prompt token, read as
    ``V(s_1)``) used as is, or 0 when ``v_first`` is None. Detached; 0 on padding.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    q = q_values.detach()
    m = _fmask(mask, q)
    qm = q * m
    B = q.shape[0]
    if v_first is None:
        first = torch.zeros(B, 1, dtype=q.dtype, device=q.device)
    else:
        if v_first.shape != (B,):
            raise ValueError(f"v_first must have shape [{B}], got {tuple(v_first.shape)}")
        first = v_first.detach().to(dtype=q.dtype, device=q.device).unsqueeze(1)
    baseline = torch.cat([first, qm[:, :-1] / gamma], dim=1)[:, : q.shape[1]]
    return (q - baseline) * m


def group_normalized_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantage (Shao et al. 2024; TRL ``GRPOTrainer``): ``(r - mean_g) / (std_g + eps)``.

    ``rewards`` is ``[N]`` with ``N = n_prompts * group_size``, ordered prompt-major
    (the ``group_size`` samples of a prompt are consecutive). ``std_g`` is the
    unbiased sample std of the group, as in TRL. Returns ``[N]``, detached.
    """
    r = rewards.detach()
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(r.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 for a group baseline, got {group_size}")
    if r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards are not a whole number of groups of {group_size}")
    if not r.is_floating_point():
        r = r.to(torch.get_default_dtype())
    g = r.view(-1, group_size)
    mean = g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True)
    return ((g - mean) / (std + eps)).reshape(-1)


def remax_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """ReMax advantage (Li et al. 2023): ``r - r_greedy``, the reward of the greedy
    response to the same prompt as baseline. ``[B]``, detached.
    """
    if rewards.shape != greedy_rewards.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and greedy_rewards {tuple(greedy_rewards.shape)} differ")
    return rewards.detach() - greedy_rewards.detach()


def broadcast_sequence_advantage(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Spread a sequence advantage ``[B]`` over the real tokens: ``[B, T]``, 0 on padding."""
    if adv.dim() != 1 or mask.dim() != 2 or adv.shape[0] != mask.shape[0]:
        raise ValueError(f"expected adv [B] and mask [B, T], got {tuple(adv.shape)} and {tuple(mask.shape)}")
    a = adv.detach()
    if not a.is_floating_point():
        a = a.to(torch.get_default_dtype())
    return a.unsqueeze(1) * mask.to(device=a.device, dtype=a.dtype)
