"""Validation splits carved from training data, by prompt.

Settings and checkpoints are chosen on data the model did not train on and the test set never
sees: a fraction of the training prompts, with all of their responses (so every pair of a
validation prompt stays whole), drawn by a seeded hash of the prompt so the split does not
depend on row order.
"""

from __future__ import annotations

import hashlib
import logging

logger = logging.getLogger(__name__)


def in_validation(prompt, fraction: float, seed: int) -> bool:
    """Whether `prompt` falls in the validation share `fraction` (a function of prompt and seed only)."""
    digest = hashlib.sha256(f"{seed}\x00{prompt!r}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_by_prompt(rows: list[dict], fraction: float, seed: int, source: str = "") -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows): the rows of about `fraction` of the distinct prompts are held out.

    `fraction` 0 holds out nothing. Raises when the split would leave either side without rows.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(rows), []
    train, validation = [], []
    for row in rows:
        (validation if in_validation(row["prompt"], fraction, seed) else train).append(row)
    if not train or not validation:
        raise ValueError(f"{source or 'data'}: a validation fraction of {fraction} leaves "
                         f"{len(train)} training and {len(validation)} validation rows; use more data or another fraction")
    logger.info("%s%d rows train, %d rows (%.0f%% of prompts) held out for validation",
                f"{source}: " if source else "", len(train), len(validation), 100 * fraction)
    return train, validation
