"""The lab task: digit-list prompts, scripted behaviour policies and the hidden ground-truth judge.

The task is small enough that a ~2M-parameter model trained from scratch on a laptop CPU
learns it in minutes, yet it has what the DVPO comparisons need: behaviour policies with
distinct traits (like the models behind UltraFeedback) and a judge whose score depends on
specific tokens at specific positions and punishes verbosity.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

TASKS = ("repeat", "reverse", "sort")
DIGITS = tuple("0123456789")
MIN_LEN = 3
MAX_LEN = 6

ACCURACY_WEIGHT = 10.0
"""Score of a perfect answer. Accuracy counts matches position by position, so one wrong
token changes the score: token-level credit assignment pays off."""

FILLER_PENALTY = 0.5
"""Cost of each non-digit word. Large enough that a verbose but correct answer loses to a
concise one (and reward hacking by padding shows), small enough that being right matters most."""


def make_prompt(task: str, digits: list[str]) -> str:
    """The prompt text for `task` over `digits`, e.g. "sort 7 2 9 4"."""
    return f"{task} {' '.join(digits)}"


def parse_prompt(prompt: str) -> tuple[str, list[str]]:
    """Split a lab prompt into its task and digit words; ValueError for anything else."""
    words = prompt.split(" ")
    if len(words) < 2 or words[0] not in TASKS or any(w not in DIGITS for w in words[1:]):
        raise ValueError(
            f"not a lab prompt: {prompt!r} (expected '<{'|'.join(TASKS)}> <digits 0-9 separated by spaces>')"
        )
    return words[0], words[1:]


def reference_answer(prompt: str) -> list[str]:
    """The correct answer to `prompt`, as a list of digit words."""
    task, digits = parse_prompt(prompt)
    if task == "reverse":
        return digits[::-1]
    if task == "sort":
        return sorted(digits)
    return digits


def sample_prompts(
    n: int,
    rng: random.Random,
    exclude: Collection[str] = frozenset(),
    min_len: int = MIN_LEN,
    max_len: int = MAX_LEN,
) -> list[str]:
    """`n` distinct prompts not in `exclude` (uniform task, length and digits), in draw order."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}..{max_len}")
    in_space = sum(1 for p in exclude if _in_space(p, min_len, max_len))
    available = len(TASKS) * sum(10**k for k in range(min_len, max_len + 1)) - in_space
    if n > available:
        raise ValueError(f"asked for {n} prompts but only {available} distinct ones of length {min_len}..{max_len} remain")
    seen = set(exclude)
    prompts: list[str] = []
    while len(prompts) < n:
        task = rng.choice(TASKS)
        digits = rng.choices(DIGITS, k=rng.randint(min_len, max_len))
        prompt = make_prompt(task, digits)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def _in_space(prompt: str, min_len: int, max_len: int) -> bool:
    try:
        return min_len <= len(parse_prompt(prompt)[1]) <= max_len
    except ValueError:
        return False


@dataclass(frozen=True)
class BehaviourPolicy:
    """A scripted responder standing in for one kind of model behind a rated dataset.

    `echo` answers with the prompt's digits whatever the task; each answer digit is replaced
    by another digit with probability `error_rate`; the last one is dropped with probability
    `drop_last_prob`; with `prefixes`/`suffixes` the answer is wrapped in filler words.
    """

    error_rate: float
    drop_last_prob: float = 0.0
    echo: bool = False
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()

    def respond(self, prompt: str, rng: random.Random) -> str:
        answer = parse_prompt(prompt)[1] if self.echo else reference_answer(prompt)
        words = [_other_digit(d, rng) if rng.random() < self.error_rate else d for d in answer]
        if rng.random() < self.drop_last_prob:
            words.pop()
        if self.prefixes:
            shape = rng.randrange(3)  # 0: prefix only, 1: suffix only, 2: both
            if shape != 1:
                words.insert(0, rng.choice(self.prefixes))
            if shape != 0:
                words.append(rng.choice(self.suffixes))
        return " ".join(words)


def _other_digit(digit: str, rng: random.Random) -> str:
    return rng.choice([d for d in DIGITS if d != digit])


POLICIES: dict[str, BehaviourPolicy] = {
    "careful": BehaviourPolicy(error_rate=0.03),
    "sloppy": BehaviourPolicy(error_rate=0.3, drop_last_prob=0.2),
    "verbose": BehaviourPolicy(
        error_rate=0.05,
        prefixes=("sure , the answer is", "ok so", "let me think :", "here you go :", "well"),
        suffixes=("hope this helps", "done .", "that is all", "easy"),
    ),
    "lazy": BehaviourPolicy(error_rate=0.0, echo=True),
}


SFT_MIX = {"careful": 0.25, "sloppy": 0.30, "verbose": 0.30, "lazy": 0.15}
"""Policy mixture behind the SFT completions. Deliberately mostly imperfect: supervised
fine-tuning imitates the mixture and lands well below `careful`, which leaves RL room to
show what the value/reward signal adds."""


def judge(prompt: str, completion: str) -> float:
    """Ground-truth score: ACCURACY_WEIGHT * positional accuracy - FILLER_PENALTY * filler words.

    Digits are the completion's single-digit words, in order; every other word is filler.
    Accuracy is the number of positions where digit and reference agree over the longer of
    the two lists, so missing and extra digits both cost.
    """
    ref = reference_answer(prompt)
    words = completion.split()
    digits = [w for w in words if w in DIGITS]
    longest = max(len(ref), len(digits))
    accuracy = sum(a == b for a, b in zip(digits, ref)) / longest if longest else 0.0
    return ACCURACY_WEIGHT * accuracy - FILLER_PENALTY * (len(words) - len(digits))
