"""PPO pieces for RLHF: log-probs, KL estimators, clipped losses, GAE, KL control.

Follows the community standard for PPO on language models: Ziegler et al. 2019
("Fine-Tuning Language Models from Human Preferences": per-token KL penalty,
score on the last token, adaptive KL coefficient), Schulman et al. 2016 (GAE),
and "The N+ implementation details of RLHF with PPO" (Huang et al., 2024) / TRL's
``PPOTrainer`` (token-level masked means, clipped value loss). DVPO (arXiv
2502.16944, section 3.3) uses the same PPO-clip objective with GVM advantages.

Tensors are ``[batch, T]`` over response positions, right-padded, with ``mask``
1 on real tokens. Masked positions of outputs are 0. Functions are pure.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from dvpo.algos.masked import _fmask, masked_mean
from dvpo.algos.td import last_token_rewards

__all__ = [
    "logprobs_from_logits",
    "entropy_from_logits",
    "kl_k1",
    "kl_k3",
    "ppo_clip_loss",
    "clipped_value_loss",
    "gae",
    "per_token_rewards",
    "AdaptiveKLController",
    "FixedKLController",
]


# --------------------------------------------------------------------------- log-probs


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``log softmax(logits / temperature)`` gathered at ``labels``: ``[..., V] -> [...]``.

    The temperature must match the one used for sampling, otherwise the ratio
    ``pi / pi_old`` is computed for a different distribution than the one that
    generated the tokens (N+ implementation details, "temperature"). In float32 /
    float64 this is ``logit[label] - logsumexp(logits)`` (no ``[.., V]`` log-softmax
    tensor is kept); in half precision a row-by-row ``log_softmax`` is used because
    ``logsumexp`` loses accuracy there (as TRL's ``selective_log_softmax``).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if temperature != 1.0:
        logits = logits / temperature
    idx = labels.long().unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, idx).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    flat_logits = logits.reshape(-1, logits.shape[-1]) if logits.dim() > 1 else logits.unsqueeze(0)
    flat_idx = idx.reshape(-1, 1)
    rows = []
    for i in range(0, flat_logits.shape[0], 1024):
        lp = F.log_softmax(flat_logits[i : i + 1024], dim=-1)
        rows.append(torch.gather(lp, -1, flat_idx[i : i + 1024]).squeeze(-1))
    out = torch.cat(rows) if rows else flat_logits.new_zeros(0)
    return out.reshape(labels.shape)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dim: ``logsumexp(l) - sum p * l`` (TRL).

    Logits of ``-inf`` (banned tokens) have ``p = 0`` and contribute nothing.
    """
    p = torch.softmax(logits, dim=-1)
    finite = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
    return torch.logsumexp(logits, dim=-1) - (p * finite).sum(dim=-1)


# --------------------------------------------------------------------------- KL estimators
# Schulman, "Approximating KL divergence" (2020), for KL(pi || ref) from samples of
# pi: with d = ref_logp - logp (log of r = ref/pi),
#   k1 = -d            unbiased, high variance, can be negative per token;
#   k2 = d^2 / 2       biased (low bias near pi = ref), always >= 0;
#   k3 = (e^d - 1) - d unbiased, always >= 0, low variance.
# All three agree to second order in d.


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token ``k1 = logp - ref_logp`` (Schulman's KL approximation blog)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token ``k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1`` (Schulman's blog).

    Computed as ``expm1(d) - d``, accurate for small ``d``; always >= 0.
    """
    d = ref_logp - logp
    return torch.expm1(d) - d


# --------------------------------------------------------------------------- losses


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017; paper eq. 3), token-level masked mean.

    ``loss = masked_mean(max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps)))`` with
    ``rho = exp(logp - old_logp)``, i.e. the negated ``min`` objective, averaged over
    all valid tokens of the batch (TRL / N+ implementation details). ``advantages``
    and ``old_logp`` are treated as constants (detached).

    ``stats`` (detached 0-d tensors):
    - ``clip_frac``: fraction of valid tokens where the clipped term is active;
    - ``approx_kl``: masked mean of ``0.5 * (logp - old_logp)^2`` (the k2 estimator
      of KL(pi_old || pi), as logged by TRL; Schulman's KL blog);
    - ``ratio_mean``: masked mean of ``rho``.
    """
    m = _fmask(mask, logp)
    old = old_logp.detach()
    adv = advantages.detach()
    log_ratio = (logp - old) * m  # zero on padding keeps exp() finite there
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(pg1, pg2), m)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((pg2 > pg1).to(m.dtype), m),
            "approx_kl": masked_mean(0.5 * log_ratio**2, m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped critic loss (N+ implementation details; TRL ``PPOTrainer``).

    ``v_clip = old + clamp(v - old, -c, c)``;
    ``loss = 0.5 * masked_mean(max((v - R)^2, (v_clip - R)^2))``.
    Returns ``(loss, clip_frac)`` where ``clip_frac`` (detached) is the fraction of
    valid tokens where the clipped term is larger. ``old_values`` and ``returns``
    are treated as constants.
    """
    m = _fmask(mask, values)
    old = old_values.detach()
    ret = returns.detach()
    v_clipped = old + torch.clamp(values - old, -clip_range, clip_range)
    vf1 = (values - ret) ** 2
    vf2 = (v_clipped - ret) ** 2
    loss = 0.5 * masked_mean(torch.maximum(vf1, vf2), m)
    with torch.no_grad():
        clip_frac = masked_mean((vf2 > vf1).to(m.dtype), m)
    return loss, clip_frac


# --------------------------------------------------------------------------- GAE / rewards


def gae(
    values: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016), detached.

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``,
    computed backwards with ``V`` and ``A`` beyond each row's last real token equal
    to 0 (the episode ends at EOS). ``returns = advantages + values`` (the critic's
    target, TRL). Both outputs are detached and 0 on padding. Defaults
    ``gamma=1, lam=0.95`` as in TRL / the N+ implementation details.
    """
    if values.shape != rewards.shape:
        raise ValueError(f"values {tuple(values.shape)} and rewards {tuple(rewards.shape)} differ in shape")
    with torch.no_grad():
        v = values.detach()
        m = _fmask(mask, v)
        v = v * m
        r = rewards.detach().to(v.dtype) * m
        T = v.shape[1]
        adv = torch.zeros_like(v)
        next_v = torch.zeros_like(v[:, 0]) if T else None
        next_a = torch.zeros_like(v[:, 0]) if T else None
        for t in reversed(range(T)):
            delta = r[:, t] + gamma * next_v - v[:, t]
            a = (delta + gamma * lam * next_a) * m[:, t]
            adv[:, t] = a
            next_v, next_a = v[:, t], a
        returns = (adv + v) * m
    return adv, returns


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """PPO reward shaping (Ziegler et al. 2019; TRL): ``-kl_coef * kl_t`` on every
    real token plus the sequence score on the last real token. Detached, 0 on padding.
    """
    with torch.no_grad():
        k = kl.detach()
        m = _fmask(mask, k)
        return -kl_coef * k * m + last_token_rewards(scores.detach().to(k.dtype), m)


# --------------------------------------------------------------------------- KL control


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, section 2.2; TRL).

    ``e = clip(current_kl / target - 1, -0.2, 0.2)``;
    ``value *= 1 + e * n_steps / horizon``. The coefficient grows when the policy
    drifts further from the reference than ``target`` and shrinks otherwise.
    Defaults follow the DVPO paper (init 0.2, target 0.1) and TRL (horizon 10000).
    """

    def __init__(self, init_kl_coef: float = 0.2, target: float = 0.1, horizon: float = 10000):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update from the measured KL after ``n_steps`` samples; returns the new value."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value}, target={self.target}, horizon={self.horizon})"


class FixedKLController:
    """Constant KL coefficient, with the same interface as :class:`AdaptiveKLController`."""

    def __init__(self, kl_coef: float = 0.2):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])

    def __repr__(self) -> str:
        return f"FixedKLController(value={self.value})"
