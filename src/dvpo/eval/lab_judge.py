"""Score generations on the lab tasks with their ground-truth judges: mean, spread and win rate.

Each row is scored by the judge of the lab task that recognises its prompt (dvpo.lab.tasks), so one
file may hold prompts of several tasks."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from pathlib import Path

from dvpo.data.formats import load_rows
from dvpo.lab.tasks import get_task, judge, task_for_prompt


def score_rows(rows: Iterable[dict]) -> list[float]:
    """Ground-truth score of each row's `completion` for its `prompt`, by the judge of the prompt's task."""
    scores = []
    for i, row in enumerate(rows):
        missing = [f for f in ("prompt", "completion") if not isinstance(row.get(f), str)]
        if missing:
            raise ValueError(f"row {i}: field {missing[0]!r} missing or not a string")
        scores.append(judge(row["prompt"], row["completion"]))
    return scores


def judge_file(generations_path: str | Path, baseline_path: str | Path | None = None) -> dict:
    """Summary of a generations file: n, mean, std (sample), sem; with a baseline file also the
    per-prompt win rate (ties count half) over the prompts both files contain."""
    rows = load_rows(generations_path, "generations")
    if not rows:
        raise ValueError(f"{generations_path}: no generations to judge")
    scores = score_rows(rows)
    n = len(scores)
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 else 0.0
    result = {"n": n, "mean": mean, "std": std, "sem": std / math.sqrt(n)}
    if baseline_path is not None:
        base_rows = load_rows(baseline_path, "generations")
        ours = _per_prompt_means(rows, scores)
        theirs = _per_prompt_means(base_rows, score_rows(base_rows))
        shared = ours.keys() & theirs.keys()
        if not shared:
            raise ValueError(f"{generations_path} and {baseline_path} share no prompt; cannot compute a win rate")
        wins = sum(1.0 if ours[p] > theirs[p] else 0.5 if ours[p] == theirs[p] else 0.0 for p in shared)
        result["win_rate"] = wins / len(shared)
        result["compared_prompts"] = len(shared)
    return result


def policy_scores(prompts: list[str], seed: int, samples_per_prompt: int = 1,
                  task: str | None = None) -> dict[str, float]:
    """Ground-truth mean score of each behaviour policy of lab task `task` on `prompts` (each policy
    has its own seeded stream, so one policy's result does not depend on the others). Without
    `task`, the task of the first prompt; every prompt must be the task's."""
    if not prompts or samples_per_prompt < 1:
        raise ValueError("policy_scores needs at least one prompt and samples_per_prompt >= 1")
    lab = get_task(task) if task is not None else task_for_prompt(prompts[0])
    if lab is None:
        raise ValueError(f"not a lab prompt: {prompts[0]!r}; policy_scores needs the prompts of a lab task")
    means = {}
    for name, policy in lab.policies.items():
        rng = random.Random(f"lab-policy-{name}-{seed}")
        total = sum(lab.judge(p, policy.respond(p, rng)) for p in prompts for _ in range(samples_per_prompt))
        means[name] = total / (len(prompts) * samples_per_prompt)
    return means


def format_report(result: dict) -> str:
    """One line for logs, e.g. "lab judge: mean 7.41 ± 0.12 (sem), std 1.74, n=200; win rate 63.0% on 200 prompts"."""
    line = f"lab judge: mean {result['mean']:.2f} ± {result['sem']:.2f} (sem), std {result['std']:.2f}, n={result['n']}"
    if "win_rate" in result:
        line += f"; win rate {100 * result['win_rate']:.1f}% on {result['compared_prompts']} prompts"
    return line


def _per_prompt_means(rows: list[dict], scores: list[float]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for row, score in zip(rows, scores):
        sums.setdefault(row["prompt"], []).append(score)
    return {p: sum(s) / len(s) for p, s in sums.items()}


def run_judge(cfg) -> dict:
    """CLI entry: `dvpo lab judge`; prints one line and optionally writes the result as JSON."""
    result = judge_file(cfg.generations, cfg.baseline)
    print(format_report(result))
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(result, indent=2))
    return result
