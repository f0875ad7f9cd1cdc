"""The built-in lab tasks, by name: prompts, scripted behaviour policies, SFT mixture and hidden judge.

- "digits" (dvpo.lab.task): `repeat|reverse|sort d d d`; short answers; four policies with distinct
  styles (careful, sloppy, verbose, lazy).
- "arith" (dvpo.lab.arith): `a 3 plus 4 ; b 2 times 5 ; ...`; answers of 21-42 words in one template;
  policies that share that template and differ only in accuracy, plus one that pads.

Every task's prompts are recognised by that task alone, so `task_for_prompt` (and `judge`) can score
any lab prompt without being told its task.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from dvpo.lab import arith, task as digits


class BehaviourPolicy(Protocol):
    def respond(self, prompt: str, rng: random.Random) -> str: ...


@dataclass(frozen=True)
class LabTask:
    """One lab task. `min_len`..`max_len` is the default prompt size in the task's own unit (digits
    for "digits", operations for "arith"); `max_new_tokens` is a generation budget that covers the
    longest behaviour-policy response with the lab tokenizer, with room to spare."""

    name: str
    summary: str
    policies: Mapping[str, BehaviourPolicy]
    sft_mix: Mapping[str, float]
    min_len: int
    max_len: int
    max_new_tokens: int
    sampler: Callable[..., list[str]] = field(repr=False)
    scorer: Callable[[str, str], float] = field(repr=False)
    parser: Callable[[str], object] = field(repr=False)

    def sample_prompts(self, n: int, rng: random.Random, exclude: Collection[str] = frozenset(),
                       min_len: int | None = None, max_len: int | None = None) -> list[str]:
        """`n` distinct prompts not in `exclude`, in draw order (sizes default to the task's)."""
        return self.sampler(n, rng, exclude=exclude, min_len=self.min_len if min_len is None else min_len,
                            max_len=self.max_len if max_len is None else max_len)

    def judge(self, prompt: str, completion: str) -> float:
        """The hidden ground-truth score of `completion` (ValueError if `prompt` is not this task's)."""
        return self.scorer(prompt, completion)

    def is_prompt(self, prompt) -> bool:
        """Whether `prompt` is one of this task's prompts."""
        if not isinstance(prompt, str):
            return False
        try:
            self.parser(prompt)
        except ValueError:
            return False
        return True


LAB_TASKS: dict[str, LabTask] = {
    task.name: task
    for task in (
        LabTask(name="digits", summary="repeat, reverse or sort 3-6 digits; four policies of distinct styles",
                policies=MappingProxyType(digits.POLICIES), sft_mix=MappingProxyType(digits.SFT_MIX),
                min_len=digits.MIN_LEN, max_len=digits.MAX_LEN, max_new_tokens=24,
                sampler=digits.sample_prompts, scorer=digits.judge, parser=digits.parse_prompt),
        LabTask(name="arith", summary="3-6 labelled single-digit plus/minus/times, answered clause by clause; "
                "policies of one style that differ in accuracy, one that pads",
                policies=MappingProxyType(arith.POLICIES), sft_mix=MappingProxyType(arith.SFT_MIX),
                min_len=arith.MIN_OPS, max_len=arith.MAX_OPS, max_new_tokens=64,
                sampler=arith.sample_prompts, scorer=arith.judge, parser=arith.parse_prompt),
    )
}
TASK_NAMES = tuple(LAB_TASKS)


def get_task(name: str) -> LabTask:
    """The registered task called `name`; ValueError naming the choices otherwise."""
    try:
        return LAB_TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown lab task {name!r} (choose from {', '.join(TASK_NAMES)})") from None


def task_for_prompt(prompt) -> LabTask | None:
    """The task that recognises `prompt`, or None when no lab task does."""
    return next((task for task in LAB_TASKS.values() if task.is_prompt(prompt)), None)


def judge(prompt: str, completion: str) -> float:
    """The ground-truth score of `completion` by the judge of `prompt`'s task; ValueError for a prompt
    no lab task recognises."""
    task = task_for_prompt(prompt)
    if task is None:
        raise ValueError(f"not a lab prompt: {prompt!r} (no lab task recognises it; tasks: {', '.join(TASK_NAMES)})")
    return task.judge(prompt, completion)


def is_lab_prompt(prompt) -> bool:
    """Whether some lab task recognises `prompt`."""
    return task_for_prompt(prompt) is not None


def judge_completions(prompts, completions, **kwargs) -> list[float]:
    """`judge` in TRL's `reward_funcs` convention: `dvpo rl --score-fn dvpo.lab.tasks:judge_completions` makes
    the lab's ground truth the loop's monitoring score (metrics `score` and `eval_score`; never a training
    signal), as `dvpo demo` and `dvpo compare` do."""
    return [judge(prompt, completion) for prompt, completion in zip(prompts, completions)]


LAB_SCORE_FN = "dvpo.lab.tasks:judge_completions"
