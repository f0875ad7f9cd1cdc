"""Advantage sources for the shared online loop (pure functions).

DVPO, PPO, ReMax and GRPO differ in where the advantage comes from:

- DVPO (arXiv 2502.16944, section 3.3): the frozen GVM's normalised value
  ``A_t = (Q_t - mu) / (sigma + eps)``; or, as options beyond the paper, the
  token difference ``A_t = Q_t - V(s_t)`` with ``V(s_t) = Q_{t-1} / gamma``, or
  GAE with the frozen GVM as the critic and its last value as the reward;
- PPO: GAE on a trained critic (see :func:`dvpo.algos.ppo.gae`);
- ReMax (Li et al. 2023): ``r - r_greedy``, a sequence-level advantage;
- GRPO (Shao et al. 2024, DeepSeekMath): group-normalised sequence rewards.

Token tensors are ``[batch, T]`` over response positions, right-padded, with
``mask`` 1 on real tokens; masked positions of outputs are 0. All outputs are
detached: advantages are constants of the policy loss.
"""

from __future__ import annotations

import torch

from dvpo.algos.masked import STD_EPS, _fmask, masked_mean, standardize
from dvpo.algos.ppo import gae
from dvpo.algos.td import last_token_rewards

__all__ = [
    "reliability_weight",
    "dvpo_value_advantages",
    "dvpo_difference_advantages",
    "dvpo_critic_advantages",
    "dvpo_advantages",
    "dvpo_authors_advantages",
    "dvpo_sequence_advantages",
    "sequence_value",
    "group_normalized_advantages",
    "remax_advantages",
    "broadcast_sequence_advantage",
]


def reliability_weight(pairwise_accuracy: float) -> float:
    """``2 * accuracy - 1`` clipped to [0, 1]: how far a scorer's held-out pairwise accuracy is above chance.

    It is the expected agreement, +1 or -1, between the scorer's preference and the truth on a
    random pair. Scaling a standardised reward by it shrinks the signal of an unreliable scorer
    towards zero, so the KL penalty holds the policy where the scorer knows little: at chance the
    signal vanishes, a perfect scorer keeps unit scale.
    """
    if not 0.0 <= pairwise_accuracy <= 1.0:
        raise ValueError(f"pairwise accuracy must lie in [0, 1], got {pairwise_accuracy}")
    return max(0.0, 2.0 * pairwise_accuracy - 1.0)


def dvpo_value_advantages(
    q_values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "batch",
    mean: float | torch.Tensor | None = None,
    std: float | torch.Tensor | None = None,
    eps: float = STD_EPS,
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
    return standardize(q, mu, sigma, eps) * m


def dvpo_difference_advantages(
    q_values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    v_first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-level difference advantage ``A_t = Q_t - V(s_t)`` (beyond the paper).

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


def dvpo_critic_advantages(
    q_values: torch.Tensor,
    v_first: torch.Tensor,
    mask: torch.Tensor,
    kl_penalty: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    reward: str = "last",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE with the frozen GVM as the critic (beyond the paper): ``(advantages, returns)``, detached.

    The GVM's value of the last token, ``Q_T``, estimates the sequence's reward, so it is the reward
    on the last token (``reward="last"``); ``reward="mean"`` puts there the mean of the response's values
    ``Q_1..Q_T`` instead (:func:`sequence_value`). Every token pays ``kl_penalty_t`` (``beta * KL_t``, or 0).
    The state values are ``V(s_1) = v_first`` and ``V(s_t) = Q_{t-1} / gamma`` for ``t > 1`` (deterministic
    transitions, no intermediate reward). Then ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` and
    GAE(gamma, lam) as for PPO's critic (:func:`dvpo.algos.ppo.gae`). With ``lam = 1`` and no KL
    every token's advantage is ``Q_T - V(s_t)``: what is left of the sequence's value to earn
    from that point, a per-state baseline that the paper's ``A_t = Q_t`` lacks.
    """
    q = q_values.detach()
    m = _fmask(mask, q)
    if v_first.shape != (q.shape[0],):
        raise ValueError(f"v_first must have shape [{q.shape[0]}], got {tuple(v_first.shape)}")
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    qm = q * m
    state_values = torch.cat([v_first.detach().to(q.dtype).unsqueeze(1), qm[:, :-1] / gamma], dim=1) * m
    rewards = last_token_rewards(sequence_value(q, m, reward), m) - kl_penalty.detach().to(q.dtype) * m
    return gae(state_values, rewards, m, gamma, lam)


SEQUENCE_VALUES = ("last", "mean")


def sequence_value(q_values: torch.Tensor, mask: torch.Tensor, how: str = "last") -> torch.Tensor:
    """One number per response from its token values ``Q_1..Q_T`` on ``mask``: ``[B]``, 0 for an empty row.

    ``"last"``: ``Q_T``, the value after the whole response (the paper's reading of the GVM's score).
    ``"mean"``: the mean of ``Q_1..Q_T``, the aggregate by which `dvpo gvm` selects its checkpoint and measures
    its pairwise accuracy (so the `reliability` weight); every ``Q_t`` estimates the same final score, and their
    mean averages out some of a GVM's per-token errors.
    """
    m = _fmask(mask, q_values)
    qm = q_values.detach() * m
    lengths = m.sum(dim=1)
    if how == "last":
        last = (lengths.long() - 1).clamp(min=0).unsqueeze(1)
        return qm.gather(1, last).squeeze(1) * (lengths > 0)
    if how == "mean":
        return qm.sum(dim=1) / lengths.clamp(min=1)
    raise ValueError(f"unknown sequence value {how!r}; choose one of {SEQUENCE_VALUES}")


def dvpo_advantages(
    form: str,
    q_values: torch.Tensor,
    v_first: torch.Tensor,
    mask: torch.Tensor,
    kl_penalty: torch.Tensor,
    mean: float | torch.Tensor,
    std: float | torch.Tensor,
    weight: float = 1.0,
    gamma: float = 1.0,
    lam: float = 0.95,
    reward: str = "last",
    trust: float = 0.0,
) -> torch.Tensor:
    """DVPO's per-token advantages from raw GVM values, in one of five forms, detached; 0 off `mask`.

    - ``"value"`` (the paper): the standardised value ``w (Q_t - mu) / sigma`` minus ``kl_penalty_t``;
    - ``"difference"``: ``w (Q_t - V(s_t)) / sigma`` minus ``kl_penalty_t``
      (:func:`dvpo_difference_advantages` on raw values);
    - ``"gae"``: GAE with the frozen GVM as critic (:func:`dvpo_critic_advantages`) on the raw values scaled
      by ``w / sigma``, with ``kl_penalty`` in its rewards and ``reward`` ("last" or "mean") as the sequence's;
    - ``"sequence"``: the same reward less ``V(s_1)`` on every token (:func:`dvpo_sequence_advantages`);
    - ``"blend"``: between the two, state ``t`` valued ``V(s_1) + trust (V(s_t) - V(s_1))``.

    The two forms that difference values apply the normalisation as a scale only, ``mu`` left out: with
    ``V(s_t) = Q_{t-1} / gamma``, subtracting ``mu`` before the division would add
    ``mu (1 - gamma) / (gamma sigma)`` to every token's advantage when ``gamma < 1``; at ``gamma = 1`` the
    level cancels and both readings agree. ``weight`` is the reliability weight (1 for none); ``trust``, the
    `blend` form's, is in [0, 1].
    """
    m = _fmask(mask, q_values)
    q, first = q_values.detach() * m, v_first.detach().to(q_values.dtype)
    penalty = kl_penalty.detach().to(q.dtype) * m
    sigma = torch.as_tensor(std, dtype=q.dtype, device=q.device)
    if form == "value":
        return dvpo_value_advantages(q, m, mode="stored", mean=mean, std=std) * weight - penalty
    scale = weight / (sigma + STD_EPS)
    if form == "difference":
        return dvpo_difference_advantages(q * scale, m, gamma, v_first=first * scale) - penalty
    if form == "gae":
        return dvpo_critic_advantages(q * scale, first * scale, m, penalty, gamma, lam, reward)[0]
    if form in ("sequence", "blend"):
        return dvpo_sequence_advantages(q * scale, first * scale, m, penalty, gamma, reward,
                                        trust if form == "blend" else 0.0)
    raise ValueError(f"unknown DVPO advantage form {form!r}; choose value, difference, gae, sequence or blend")


def dvpo_sequence_advantages(
    q_values: torch.Tensor,
    v_first: torch.Tensor,
    mask: torch.Tensor,
    kl_penalty: torch.Tensor,
    gamma: float = 1.0,
    reward: str = "last",
    trust: float = 0.0,
) -> torch.Tensor:
    """The GVM's values as a prompt-level baseline only (beyond the paper), detached, 0 off `mask`: every token's
    advantage is the response's reward (:func:`sequence_value`, ``Q_T`` or the mean) minus ``V(s_1)``, the GVM's
    value of the prompt, minus the KL still to pay: GAE at λ 1 with every state valued ``V(s_1)``. With γ 1 that
    is ``A_t = R - V(s_1) - sum_{k >= t} kl_k``. Unlike `gae`, no value of a partial response enters, so a GVM's
    per-token errors cannot move credit between the tokens of one response.

    ``trust`` in [0, 1] lets the values of partial responses back in by that much: state ``t`` is valued
    ``V(s_1) + trust (V(s_t) - V(s_1))`` with ``V(s_t) = Q_{t-1} / gamma``, so 0 is the form above and 1 is `gae`
    at λ 1 (the `blend` form passes the GVM's reliability weight: a GVM near chance is trusted per response only).
    """
    if not 0.0 <= trust <= 1.0:
        raise ValueError(f"trust must lie in [0, 1], got {trust}")
    m = _fmask(mask, q_values)
    q = q_values.detach() * m
    if v_first.shape != (q.shape[0],):
        raise ValueError(f"v_first must have shape [{q.shape[0]}], got {tuple(v_first.shape)}")
    first = v_first.detach().to(q.dtype).unsqueeze(1)
    per_state = torch.cat([first, q[:, :-1] / gamma], dim=1)
    state_values = (first + trust * (per_state - first)) * m
    rewards = last_token_rewards(sequence_value(q, m, reward), m) - kl_penalty.detach().to(q.dtype) * m
    return gae(state_values, rewards, m, gamma, 1.0)[0]


def dvpo_authors_advantages(
    values_before: torch.Tensor,
    mask: torch.Tensor,
    row_mean: torch.Tensor,
    row_var: torch.Tensor,
    kl_penalty: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> torch.Tensor:
    """DVPO as the authors' code computes it (microsoft/DKI_LLM, dvpo/policy_model_training/policyv1_trainer.py),
    before the batch whitening of advantages that the loop applies; detached, 0 off `mask`.

    ``values_before[b, t]`` is the frozen GVM's value of the state before response token ``t`` (the slot the
    authors' value model trains its score on, one before the token). Each row's values are whitened with that
    row's own mean and unbiased variance over all its positions, prompt included (``row_mean``, ``row_var``:
    trl's ``whiten`` on a forward batch of one row): ``u_t = (v_t - mu) / sqrt(var + 1e-8)``. The per-token
    reward is only ``-kl_penalty_t`` (the score term is commented out there), and GAE runs with a zero value
    after the last token: ``delta_t = -kl_t + gamma u_{t+1} - u_t`` with ``u_{T+1} = 0``, so the last token's
    advantage is ``-kl_T - u_T``.
    """
    m = _fmask(mask, values_before)
    u = (values_before.detach() - row_mean.detach()[:, None]) * torch.rsqrt(row_var.detach()[:, None] + 1e-8)
    return gae(u * m, -kl_penalty.detach().to(u.dtype) * m, m, gamma, lam)[0]


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Prompt-major rewards ``[N]`` as ``[N / group_size, group_size]``, detached, in a float dtype."""
    r = rewards.detach()
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(r.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 for a group baseline, got {group_size}")
    if r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards are not a whole number of groups of {group_size}")
    if not r.is_floating_point():
        r = r.to(torch.get_default_dtype())
    return r.view(-1, group_size)


def group_normalized_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantage (Shao et al. 2024; TRL ``GRPOTrainer``): ``(r - mean_g) / (std_g + eps)``.

    ``rewards`` is ``[N]`` with ``N = n_prompts * group_size``, ordered prompt-major
    (the ``group_size`` samples of a prompt are consecutive). ``std_g`` is the
    unbiased sample std of the group, as in TRL. Returns ``[N]``, detached.
    """
    g = _groups(rewards, group_size)
    mean = g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True)
    return ((g - mean) / (std + eps)).reshape(-1)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantage (Ahmadian et al. 2024; TRL ``RLOOTrainer``): ``r_i - mean_{j != i} r_j`` within each
    group of ``group_size`` consecutive samples of one prompt (prompt-major, as for GRPO). ``[N]``, detached."""
    g = _groups(rewards, group_size)
    others_mean = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - others_mean).reshape(-1)


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
