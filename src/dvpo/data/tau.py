"""Policy conditioning (tau): another prompt/response pair of the same policy, on a different prompt.

The global value model reads `[tau ; prompt ; response]`. We render tau as an earlier
exchange of the same conversation — user: tau prompt, assistant: tau response, user:
prompt — so the model's own chat template joins the parts, and the policy stage builds the
identical input from the current policy's responses (see `conditioned_prompt`).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict

logger = logging.getLogger(__name__)

DEFAULT_POOL = "<all>"


def conditioned_prompt(prompt, tau_prompt=None, tau_response=None) -> list[dict] | str:
    """The GVM's prompt: tau as a preceding exchange, or the bare prompt when tau is off."""
    return conditioned_on(prompt, [] if tau_prompt is None else [(tau_prompt, tau_response)])


def conditioned_on(prompt, pairs: list[tuple]) -> list[dict] | str:
    """The GVM's prompt after several (prompt, response) pairs of the same policy, oldest first.

    The paper's tau is "typically a sequence of question-answer pairs"; more pairs show more of the
    policy's behaviour at the cost of a longer input. No pairs: the bare prompt.
    """
    if not pairs:
        return prompt
    turns = [m for tau_prompt, tau_response in pairs
             for m in (*_as_messages(tau_prompt, "user"), *_as_messages(tau_response, "assistant"))]
    return [*turns, *_as_messages(prompt, "user")]


def _as_messages(value, role: str) -> list[dict]:
    return list(value) if isinstance(value, list) else [{"role": role, "content": value}]


def sample_tau_indices(prompts: list, policies: list[str | None], seed: int) -> list[int | None]:
    """For each row, the index of a row of the same policy on a different prompt (seeded).

    Rows without a policy form one pool. A row whose pool has no other prompt gets None and
    is counted in the log (it is then scored without tau, never dropped).
    """
    return [picks[0] if picks else None for picks in sample_tau_sets(prompts, policies, seed, 1)]


def sample_tau_sets(prompts: list, policies: list[str | None], seed: int, pairs: int) -> list[list[int]]:
    """For each row, `pairs` indices of rows of the same policy on other prompts (seeded; fewer, or none,
    when the pool lacks them: counted in the log). `pairs=1` draws what `sample_tau_indices` draws."""
    rng = random.Random(f"tau-{seed}")
    pools: dict[str, list[int]] = defaultdict(list)
    for i, policy in enumerate(policies):
        pools[policy if policy is not None else DEFAULT_POOL].append(i)
    keys = [repr(p) for p in prompts]
    chosen: list[list[int]] = []
    missing = 0
    for i, policy in enumerate(policies):
        pool = pools[policy if policy is not None else DEFAULT_POOL]
        picks: list[int] = []
        for _ in range(pairs):
            pick = None
            for _ in range(16):  # rejection sampling: a pool almost always has other prompts
                j = pool[rng.randrange(len(pool))]
                if keys[j] != keys[i] and j not in picks:
                    pick = j
                    break
            if pick is None:
                others = [j for j in pool if keys[j] != keys[i] and j not in picks]
                pick = rng.choice(others) if others else None
            if pick is None:
                break
            picks.append(pick)
        missing += not picks
        chosen.append(picks)
    if missing:
        logger.warning("tau: %d of %d rows have no other prompt of their policy and are scored without tau",
                       missing, len(prompts))
    return chosen
