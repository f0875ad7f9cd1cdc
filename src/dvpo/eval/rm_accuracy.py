"""Reward-model pairs and pairwise accuracy: does the better response get the higher score?

`pairwise_pairs` is shared by training (`dvpo rm`) and evaluation, so both read rated and
preference data the same way: preference rows are pairs as given; rated rows give, per prompt,
every pair of responses with different scores ("all") or the best against the worst
("best-worst"). Equal-score pairs carry no preference and are skipped, with a count.
"""

from __future__ import annotations

import logging
from itertools import combinations
from operator import itemgetter
from typing import NamedTuple

from dvpo.data.formats import row_kind
from dvpo.models.reward_model import RewardModel

logger = logging.getLogger(__name__)

PAIR_MODES = ("all", "best-worst")
_by_score = itemgetter("score")


class Pairs(NamedTuple):
    """(prompt, better, worse) triples and what gave none, so nothing is dropped silently."""

    triples: list[tuple]
    tied: int = 0    # equal-score pairs skipped ("best-worst": prompts whose best and worst tie)
    single: int = 0  # prompts with one response only

    def describe(self) -> str:
        return (f"{len(self.triples)} pairs; skipped {self.tied} equal-score pairs and "
                f"{self.single} prompts with a single response")


def pairwise_pairs(rows: list[dict], mode: str = "all") -> Pairs:
    """Pairs from preference rows (as given) or rated rows (`mode`: "all" or "best-worst")."""
    if mode not in PAIR_MODES:
        raise ValueError(f"mode must be one of {', '.join(PAIR_MODES)}; got {mode!r}")
    if row_kind(rows) == "preference":
        return Pairs([(r["prompt"], r["chosen"], r["rejected"]) for r in rows])
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(repr(row["prompt"]), []).append(row)  # repr: conversational prompts are lists
    triples, tied, single = [], 0, 0
    for group in by_prompt.values():
        if len(group) < 2:
            single += 1
            continue
        best_worst = [(max(group, key=_by_score), min(group, key=_by_score))]
        candidates = combinations(group, 2) if mode == "all" else best_worst
        for a, b in candidates:
            if a["score"] == b["score"]:
                tied += 1
                continue
            better, worse = (a, b) if a["score"] > b["score"] else (b, a)
            triples.append((better["prompt"], better["completion"], worse["completion"]))
    return Pairs(triples, tied, single)


def response_key(prompt, response) -> tuple[str, str]:
    """A hashable key of one (prompt, response); conversational fields are lists."""
    return repr(prompt), repr(response)


def unique_responses(triples: list[tuple]) -> list[tuple]:
    """Each distinct (prompt, response) of the pairs once, in first-seen order (so each is scored once)."""
    unique: dict[tuple[str, str], tuple] = {}
    for prompt, better, worse in triples:
        for response in (better, worse):
            unique.setdefault(response_key(prompt, response), (prompt, response))
    return list(unique.values())


def rm_accuracy(rm: RewardModel, rows: list[dict], mode: str = "all", batch_size: int = 32) -> dict:
    """Share of pairs whose better response scores higher (ties count half)."""
    pairs = pairwise_pairs(rows, mode)
    logger.info("reward model accuracy: %s", pairs.describe())
    if not pairs.triples:
        raise ValueError("no pairs to compare: every prompt's responses tie or stand alone")
    unique = unique_responses(pairs.triples)
    raw = rm.score([p for p, _ in unique], [r for _, r in unique], batch_size=batch_size).tolist()
    scores = {response_key(p, r): s for (p, r), s in zip(unique, raw)}
    correct = 0.0
    for prompt, better, worse in pairs.triples:
        a, b = scores[response_key(prompt, better)], scores[response_key(prompt, worse)]
        correct += 1.0 if a > b else 0.5 if a == b else 0.0
    return {"pairs": len(pairs.triples), "accuracy": correct / len(pairs.triples)}
