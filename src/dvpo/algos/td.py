"""Value-learning targets and normalisation for the global value model (GVM).

DVPO (arXiv 2502.16944, section 3.2) trains a policy-conditioned action value
``Q(tau, s_t, a_t)`` on offline rated data with temporal-difference learning:
only the last response token carries the reward ``r_T = r(x, y)``, every other
``r_t = 0``, and the TD(0) target is ``G_t = r_t + gamma * Q(tau, s_{t+1}, a_{t+1})``.
Here that target is generalised to lambda-returns (lambda=0: the paper's TD(0);
lambda=1: the Monte-Carlo return ``gamma^(T-t) r_T``).

The paper also batch-normalises predicted values, ``(Q - mu_B) / (sigma_B + eps)``,
because offline scores are often skewed; :func:`update_moments` keeps running
statistics of the predicted values (a pure version of TRL's ``RunningMoments``)
so the trainer can save them with the checkpoint for the policy stage.

Tensors are ``[batch, T]`` over response positions, right-padded, with ``mask``
1 on real tokens. Masked positions of outputs are 0. Functions are pure.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from dvpo.algos.masked import STD_EPS, _fmask, masked_mean, standardize

__all__ = [
    "last_token_rewards",
    "td_lambda_targets",
    "value_normalization",
    "gvm_td_loss",
    "update_moments",
    "moments_std",
    "score_normalizer",
    "normalize_scores",
]


def last_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence score placed on each row's last real token, 0 elsewhere: ``[B, T]``.

    The paper's sparse token reward (section 3.1): intermediate steps get 0, the
    final step gets ``r(x, y)``. Rows with no real token get all zeros.
    """
    if scores.dim() != 1 or mask.dim() != 2 or scores.shape[0] != mask.shape[0]:
        raise ValueError(f"expected scores [B] and mask [B, T], got {tuple(scores.shape)} and {tuple(mask.shape)}")
    dtype = scores.dtype if scores.is_floating_point() else torch.get_default_dtype()
    m = mask.to(device=scores.device, dtype=dtype)
    B, T = m.shape
    out = torch.zeros(B, T, dtype=dtype, device=scores.device)
    if T == 0:
        return out
    positions = torch.arange(T, device=scores.device)
    # index of the last real token (robust even if the mask were not a prefix)
    last = torch.where(m > 0, positions, torch.full_like(positions, -1)).amax(dim=1)
    has_token = last >= 0
    rows = torch.arange(B, device=scores.device)[has_token]
    out[rows, last[has_token]] = scores.to(dtype)[has_token]
    return out


def td_lambda_targets(
    values: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Lambda-return targets for ``Q(s_t, a_t)``, detached: ``[B, T]``.

    Backward recursion (Sutton & Barto, section 12.1, on action values):
    ``G_t = r_t + gamma * [(1 - lam) * Q_{t+1} + lam * G_{t+1}]`` with ``Q`` and ``G``
    beyond each row's last real token equal to 0 (the episode ends there).

    - ``lam = 0``: the paper's TD(0) target ``r_t + gamma * Q_{t+1}`` (section 3.2).
    - ``lam = 1``: the Monte-Carlo return; with the sparse reward it is
      ``gamma^(T-t) * r_T``.

    The result is computed from ``values.detach()``: it is a *stop-gradient*
    target, so the TD loss ``(Q_t - G_t)^2`` only moves ``Q_t`` (semi-gradient TD);
    no gradient flows into the bootstrap term ``Q_{t+1}``.
    """
    if values.shape != rewards.shape:
        raise ValueError(f"values {tuple(values.shape)} and rewards {tuple(rewards.shape)} differ in shape")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    with torch.no_grad():
        v = values.detach()
        m = _fmask(mask, v)
        r = rewards.detach().to(v.dtype) * m
        v = v * m
        T = v.shape[1]
        out = torch.zeros_like(v)
        next_q = torch.zeros_like(v[:, 0]) if T else None
        next_g = torch.zeros_like(v[:, 0]) if T else None
        for t in reversed(range(T)):
            g = r[:, t] + gamma * ((1.0 - lam) * next_q + lam * next_g)
            g = g * m[:, t]  # padding: the (absent) successor of the last token has Q = G = 0
            out[:, t] = g
            next_q, next_g = v[:, t], g
    return out


def value_normalization(
    values: torch.Tensor, mask: torch.Tensor, eps: float = STD_EPS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-normalise predicted values over valid tokens (paper, section 3.2).

    ``(Q - mu_B) / (sigma_B + eps)`` with ``mu_B`` and the population standard
    deviation ``sigma_B`` (1/B, as in the paper) over the valid tokens of the batch.
    Gradients flow through ``mu_B`` and ``sigma_B`` as in batch normalisation; the
    returned ``mean`` and ``std`` (0-d tensors) are detached, for logging and for
    :func:`update_moments`. Masked positions of ``normalized`` are 0.
    """
    m = _fmask(mask, values)
    mean = masked_mean(values, m)
    var = masked_mean((values - mean) ** 2, m)
    # sqrt has an infinite derivative at 0: keep the gradient finite for constant batches
    positive = var > 0
    std = torch.where(positive, torch.sqrt(torch.where(positive, var, torch.ones_like(var))), torch.zeros_like(var))
    normalized = standardize(values, mean, std, eps) * m
    return normalized, mean.detach(), std.detach()


def gvm_td_loss(
    values: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    normalization: str = "none",
    eps: float = STD_EPS,
) -> torch.Tensor:
    """Mean squared TD(lambda) error of the GVM over the value slots; the target is stop-gradient.

    - ``"none"``: ``(Q_t - G_t)^2`` with ``G_t`` built from the raw values.
    - ``"batch"``: the paper's batch statistics (eq. 2), taken over the detached *targets* of the
      batch and applied to prediction and target alike: ``((Q_t - mu_B)/(sigma_B + eps) -
      (G_t - mu_B)/(sigma_B + eps))^2``. The targets are built from raw values, so the value scale
      stays the rewards' and no target is built from a fresh head's noise blown up to unit variance
      (normalising the targets, as PopArt does, instead of the predictions).
    - ``"batch-predictions"``: the paper read literally: the predictions are batch-normalised (with
      gradient through ``mu_B`` and ``sigma_B``) and the TD targets are built from the normalised
      predictions. Kept to measure it: under TD(0) most slots then learn from amplified noise.
    """
    if normalization == "batch-predictions":
        values, _, _ = value_normalization(values, mask, eps)
    targets = td_lambda_targets(values, rewards, mask, gamma, lam)
    error = values - targets
    if normalization == "batch":
        _, _, sigma = value_normalization(targets, mask, eps)
        error = error / torch.where(sigma > 0, sigma + eps, torch.ones_like(sigma))  # constant targets: unscaled
    elif normalization not in ("none", "batch-predictions"):
        raise ValueError(f"unknown normalization {normalization!r}; choose none, batch or batch-predictions")
    return masked_mean(error ** 2, mask)


def update_moments(
    count: int | float,
    mean: float,
    m2: float,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[int, float, float]:
    """Merge the valid entries of ``x`` into running ``(count, mean, m2)``, in float64.

    Chan, Golub & LeVeque's parallel form of Welford's algorithm (as used by TRL's
    ``RunningMoments``): ``m2`` is the sum of squared deviations from the mean.
    Start from ``(0, 0.0, 0.0)``; the state is three Python numbers, so a trainer
    can keep running statistics of predicted values and store them with the
    checkpoint. Use :func:`moments_std` for the standard deviation. Inputs are not
    modified; an empty batch returns the state unchanged.
    """
    xd = x.detach().to(torch.float64)
    if mask is None:
        vals = xd.reshape(-1)
    else:
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match x shape {tuple(x.shape)}")
        vals = xd[mask.to(xd.device).bool()]
    n_b = int(vals.numel())
    count = int(count)
    if n_b == 0:
        return count, float(mean), float(m2)
    mean_b = float(vals.mean())
    m2_b = float(((vals - mean_b) ** 2).sum())
    n = count + n_b
    delta = mean_b - float(mean)
    new_mean = float(mean) + delta * n_b / n
    new_m2 = float(m2) + m2_b + delta * delta * count * n_b / n
    return n, new_mean, new_m2


def moments_std(count: int | float, m2: float, unbiased: bool = False) -> float:
    """Standard deviation from running moments.

    Population std ``sqrt(m2 / count)`` by default, matching the paper's
    ``sigma_B`` (1/B); ``unbiased=True`` divides by ``count - 1`` as TRL's
    ``RunningMoments`` does. Returns 0.0 when there are too few samples.
    """
    denom = count - 1 if unbiased else count
    if denom <= 0:
        return 0.0
    return math.sqrt(max(float(m2), 0.0) / denom)


def score_normalizer(
    scores: torch.Tensor | Sequence[float], min_std: float = 1e-6
) -> tuple[float, float]:
    """Z-score statistics ``(mean, std)`` of offline sequence scores.

    Offline rated data is often skewed (paper, section 3.2: "predominantly
    positive if most responses are high-quality"), which pushes the value model
    to extreme values. Standardising the scores once, before TD learning, centres
    the targets. ``std`` is the population std floored at ``min_std``, so constant
    scores do not divide by zero. Raises on empty or non-finite input.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if s.numel() == 0:
        raise ValueError("score_normalizer needs at least one score")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores contain NaN or infinite values")
    mean = float(s.mean())
    std = float(s.std(correction=0))
    return mean, max(std, float(min_std))


def normalize_scores(
    scores: torch.Tensor | Sequence[float], mean: float, std: float
) -> torch.Tensor:
    """``(scores - mean) / std`` with statistics from :func:`score_normalizer`.

    Returns a new tensor (floating input keeps its dtype; other input becomes the
    default float dtype).
    """
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    s = torch.as_tensor(scores)
    if not s.is_floating_point():
        s = s.to(torch.get_default_dtype())
    return (s - mean) / std


def prompt_relative_scores(scores: Sequence[float], groups: Sequence, min_std: float = 1e-6) -> tuple[torch.Tensor, float]:
    """Scores centred on their prompt's mean and scaled by the std of the centred scores.

    Offline rated data usually has several responses per prompt, and much of the score
    variance is between prompts (some prompts are simply easier). A value model that must also
    predict that spends its capacity on prompt difficulty; centring per prompt leaves the
    within-prompt differences that pairwise accuracy and policy improvement depend on (a
    prompt-level baseline). A prompt with a single response gets 0. Returns (scores, std).
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if s.numel() != len(groups):
        raise ValueError(f"{s.numel()} scores but {len(groups)} groups")
    index = {}
    ids = torch.tensor([index.setdefault(g, len(index)) for g in groups], dtype=torch.long)
    sums = torch.zeros(len(index), dtype=torch.float64).index_add_(0, ids, s)
    counts = torch.zeros(len(index), dtype=torch.float64).index_add_(0, ids, torch.ones_like(s))
    centred = s - (sums / counts)[ids]
    std = max(float(centred.std(correction=0)), float(min_std))
    return centred / std, std
