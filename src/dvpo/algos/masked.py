"""Masked reductions over response tokens.

All tensors are ``[batch, T]`` over response positions; ``mask`` (float or bool)
is 1 on real tokens and 0 on padding. Statistics are taken over the valid
tokens only, as in TRL's ``masked_mean`` / ``masked_whiten`` and "The N+
implementation details of RLHF with PPO" (Huang et al., 2024): padding must not
shift the mean or shrink the variance of advantages and values.

Functions are pure: they never modify their inputs.
"""

from __future__ import annotations

import torch

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten", "whiten_with", "standardize", "STD_EPS"]

STD_EPS = 1e-6
"""Added to a standard deviation before dividing by it, wherever values or scores are standardised."""


def _fmask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` as a 0/1 tensor of ``like``'s dtype and device (bool masks allowed)."""
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match tensor shape {tuple(like.shape)}")
    return mask.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.get_default_dtype())


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over valid tokens (all of them if ``dim`` is None)."""
    m = _fmask(mask, x)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over valid tokens (TRL ``masked_mean``).

    With ``dim=None`` it is the mean over all valid tokens of the batch (token-level
    average, the PPO/TRL convention), otherwise the mean along ``dim``. Where a slice
    has no valid token the result is 0 rather than NaN.
    """
    m = _fmask(mask, x)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim=dim) / m.sum(dim=dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all valid tokens (TRL ``masked_var``).

    ``unbiased=True`` applies Bessel's correction n/(n-1), as TRL does. With fewer
    than two valid tokens the spread cannot be measured and the result is 0 (TRL
    raises instead; a training step should not crash on a tiny batch).
    """
    m = _fmask(mask, x)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum()
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1.0), torch.zeros_like(var))
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its valid tokens.

    As in TRL's ``masked_whiten`` and "The N+ implementation details of RLHF with
    PPO" (advantage whitening): ``(x - mean) / sqrt(var + eps)``; with
    ``shift_mean=False`` the mean is added back (only the scale changes, used for
    rewards). Padding positions of the result are 0.
    """
    m = _fmask(mask, x)
    return whiten_with(x, m, masked_mean(x, m), masked_var(x, m, unbiased=True), shift_mean, eps)


def whiten_with(
    x: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, shift_mean: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """``masked_whiten`` with the moments given: a batch split over processes passes the global ones
    (`dvpo.distributed.BatchStats`)."""
    m = _fmask(mask, x)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def standardize(x: torch.Tensor, mean, std, eps: float = STD_EPS) -> torch.Tensor:
    """``(x - mean) / (std + eps)``: the one value and score normaliser (the GVM's batch norm, its stored
    statistics in DVPO's advantages, the reward model's stored score statistics)."""
    return (x - mean) / (std + eps)
