"""Write the lab's SFT, rated, preference and prompt files (TRL field names) from one seed."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

from dvpo.data.jsonl import write_jsonl
from dvpo.lab.task import SFT_MIX
from dvpo.lab.tasks import LabTask, get_task

logger = logging.getLogger(__name__)

DEFAULT_SFT_MIX = SFT_MIX
"""The digit lab's policy mixture behind the SFT completions (each task has its own: `LabTask.sft_mix`)."""


def make_lab_data(
    out_dir: str | Path,
    seed: int = 0,
    n_sft: int = 1200,
    n_rated: int = 2000,
    n_rl: int = 800,
    n_test: int = 200,
    n_rated_test: int = 200,
    n_validation: int | None = None,
    rating_noise: float = 0.5,
    sft_mix: dict[str, float] | None = None,
    min_len: int | None = None,
    max_len: int | None = None,
    task: str = "digits",
) -> dict[str, Path]:
    """Write the data set of lab task `task` into `out_dir`; returns the path of each file by kind.

    The default counts follow the paper's split of training prompts: 30% SFT, 50% rated (reward/value learning),
    20% RL. Test and rated-test prompts are held out, and so are validation and rated-validation prompts
    (`n_validation` each, default `n_test`) for choosing settings without looking at the test sets (`dvpo
    compare --judge-on validation`); all prompt sets are pairwise disjoint. Rated scores are the ground-truth
    judge plus Gaussian annotator noise of std `rating_noise`. `sft_mix` defaults to the task's mixture, and the
    prompt sizes `min_len`..`max_len` (in the task's unit) to the task's. Output is a function of the arguments
    alone.
    """
    lab = get_task(task)
    policies = lab.policies
    mix = dict(lab.sft_mix if sft_mix is None else sft_mix)
    unknown = set(mix) - set(policies)
    if unknown or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"sft_mix needs non-negative weights over {sorted(policies)} with a positive sum, got {mix}")
    min_len = lab.min_len if min_len is None else min_len
    max_len = lab.max_len if max_len is None else max_len
    out = Path(out_dir)

    # Held-out sets are drawn first so they do not change when the training counts do.
    prompt_rng = random.Random(f"lab-prompts-{seed}")
    taken: set[str] = set()
    sets = {}
    n_validation = n_test if n_validation is None else n_validation
    # Validation sets last: adding them left every earlier set (and so every earlier result) as it was.
    for name, n in [("test", n_test), ("rated_test", n_rated_test), ("sft", n_sft), ("rated", n_rated), ("rl", n_rl),
                    ("validation", n_validation), ("rated_validation", n_validation)]:
        sets[name] = lab.sample_prompts(n, prompt_rng, exclude=taken, min_len=min_len, max_len=max_len)
        taken.update(sets[name])

    sft_rng = random.Random(f"lab-sft-{seed}")
    names, weights = list(mix), list(mix.values())
    sft_rows = []
    for prompt in sets["sft"]:
        policy = sft_rng.choices(names, weights)[0]
        sft_rows.append({"prompt": prompt, "completion": policies[policy].respond(prompt, sft_rng)})

    rated = _rated_rows(sets["rated"], random.Random(f"lab-rated-{seed}"), rating_noise, lab)
    rated_test = _rated_rows(sets["rated_test"], random.Random(f"lab-rated-test-{seed}"), rating_noise, lab)
    rated_validation = _rated_rows(sets["rated_validation"], random.Random(f"lab-rated-validation-{seed}"),
                                   rating_noise, lab)
    preference, skipped = _preference_rows(rated)
    if skipped:
        logger.info("lab preference pairs: skipped %d of %d prompts whose best and worst responses tie", skipped, len(sets["rated"]))

    files = {
        "sft": ("sft.jsonl", sft_rows),
        "rated": ("rated.jsonl", rated),
        "preference": ("preference.jsonl", preference),
        "prompts": ("prompts.jsonl", [{"prompt": p} for p in sets["rl"]]),
        "test_prompts": ("test_prompts.jsonl", [{"prompt": p} for p in sets["test"]]),
        "rated_test": ("rated_test.jsonl", rated_test),
        "validation_prompts": ("validation_prompts.jsonl", [{"prompt": p} for p in sets["validation"]]),
        "rated_validation": ("rated_validation.jsonl", rated_validation),
    }
    paths = {kind: out / name for kind, (name, _) in files.items()}
    counts = {kind: write_jsonl(paths[kind], rows) for kind, (_, rows) in files.items()}
    manifest = {
        "task": task,
        "seed": seed,
        "files": {kind: name for kind, (name, _) in files.items()},
        "counts": counts,
        "prompt_counts": {name: len(prompts) for name, prompts in sets.items()},
        "preference_skipped": skipped,
        "rating_noise": rating_noise,
        "sft_mix": mix,
        "min_len": min_len,
        "max_len": max_len,
    }
    paths["manifest"] = out / "manifest.json"
    tmp = out / f".manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, paths["manifest"])
    return paths


def _rated_rows(prompts: list[str], rng: random.Random, noise: float, lab: LabTask) -> list[dict]:
    """One response per behaviour policy per prompt, scored by the task's judge plus annotator noise."""
    rows = []
    for prompt in prompts:
        for name, policy in lab.policies.items():
            completion = policy.respond(prompt, rng)
            score = round(lab.judge(prompt, completion) + rng.gauss(0.0, noise), 3)
            rows.append({"prompt": prompt, "completion": completion, "score": score, "policy": name})
    return rows


def _preference_rows(rated: list[dict]) -> tuple[list[dict], int]:
    """Best vs worst response per prompt by noisy score; prompts with a tie (equal scores or
    identical texts, which would make a contradictory pair) are skipped and counted."""
    by_prompt: dict[str, list[dict]] = {}
    for row in rated:
        by_prompt.setdefault(row["prompt"], []).append(row)
    pairs, skipped = [], 0
    for prompt, rows in by_prompt.items():
        best = max(rows, key=lambda r: r["score"])
        worst = min(rows, key=lambda r: r["score"])
        if best["score"] == worst["score"] or best["completion"] == worst["completion"]:
            skipped += 1
            continue
        pairs.append({"prompt": prompt, "chosen": best["completion"], "rejected": worst["completion"]})
    return pairs, skipped


def run_make_data(cfg) -> dict[str, Path]:
    """CLI entry: `dvpo lab make-data`."""
    paths = make_lab_data(cfg.out, seed=cfg.seed, n_sft=cfg.n_sft, n_rated=cfg.n_rated, n_rl=cfg.n_rl,
                          n_test=cfg.n_test, n_rated_test=cfg.n_rated_test, rating_noise=cfg.rating_noise,
                          task=cfg.task)
    for name, path in paths.items():
        print(f"{name:>13}: {path}")
    return paths
