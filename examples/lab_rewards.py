"""Rule-based reward functions for the digit lab, in TRL's `reward_funcs` convention.

Each takes the batch's prompts and completions (and any other field of the prompt file as a keyword
argument) and returns one float per completion. Train on them without a reward model:

    dvpo rl --algo grpo --reward-fn examples/lab_rewards.py:exact_answer --policy SFT --prompts prompts.jsonl ...
    dvpo rl --algo ppo --reward-fn examples/lab_rewards.py:exact_answer examples/lab_rewards.py:digits_only \
        --reward-weights 1.0 0.5 ...

They check a lab prompt ("repeat 3 1 2", "reverse 7 8 9", "sort 5 2 8") by its rule, like a unit test
checks code; they know nothing of the lab's hidden judge.
"""

from __future__ import annotations


def expected_digits(prompt: str) -> list[str]:
    """The answer a prompt asks for: its digits repeated, reversed or sorted."""
    task, *digits = prompt.split()
    return {"repeat": digits, "reverse": digits[::-1], "sort": sorted(digits)}[task]


def exact_answer(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the completion is exactly the expected digits, space-separated; else 0.0 (a verifiable reward)."""
    return [float(completion.split() == expected_digits(prompt)) for prompt, completion in zip(prompts, completions)]


def digits_only(prompts, completions, **kwargs) -> list[float]:
    """A format reward: the share of the completion's words that are single digits (1.0 for a bare answer)."""
    words = [completion.split() for completion in completions]
    return [sum(w.isdigit() and len(w) == 1 for w in ws) / len(ws) if ws else 0.0 for ws in words]
