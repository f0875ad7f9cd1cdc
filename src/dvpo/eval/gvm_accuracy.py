"""`dvpo eval gvm`: the paper's Appendix C table — is the better response valued higher?

For every pair of responses to the same prompt with different scores, each response's token
values are reduced to one number (mean, a percentile, or the last token's value) and the pair
counts as correct when the better response gets the larger number (ties count half).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import torch

from dvpo.data.formats import load_scored_rows
from dvpo.data.tau import sample_tau_sets
from dvpo.models.value_model import GlobalValueModel, load_value_model

logger = logging.getLogger(__name__)

PERCENTILES = (1, 5, 10, 90, 95, 99)
AGGREGATIONS = ("mean", *(f"p{p}" for p in PERCENTILES), "last")


def aggregate(values: torch.Tensor) -> dict[str, float]:
    """One response's token values reduced every way the table reports."""
    values = values.double()
    result = {"mean": float(values.mean())}
    for p in PERCENTILES:
        result[f"p{p}"] = float(torch.quantile(values, p / 100))
    result["last"] = float(values[-1])
    return result


def pairwise_accuracy(prompts: list, scores: list[float], aggregates: list[dict[str, float]]) -> dict:
    """Accuracy per aggregation over all same-prompt pairs whose scores differ."""
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_prompt[repr(prompt)].append(i)
    correct = dict.fromkeys(AGGREGATIONS, 0.0)
    pairs = 0
    for rows in by_prompt.values():
        for i, j in combinations(rows, 2):
            if scores[i] == scores[j]:
                continue
            better, worse = (i, j) if scores[i] > scores[j] else (j, i)
            pairs += 1
            for name in AGGREGATIONS:
                a, b = aggregates[better][name], aggregates[worse][name]
                correct[name] += 1.0 if a > b else 0.5 if a == b else 0.0
    if pairs == 0:
        raise ValueError("no prompt has two responses with different scores: nothing to compare")
    return {"pairs": pairs, "accuracy": {name: correct[name] / pairs for name in AGGREGATIONS}}


def token_values(gvm: GlobalValueModel, rows: list[dict], seed: int, batch_size: int = 32) -> list[torch.Tensor]:
    """Normalised token values of each row's response, tau drawn from the same file and policy."""
    picks = (sample_tau_sets([r["prompt"] for r in rows], [r.get("policy") for r in rows], seed, gvm.meta.tau_pairs)
             if gvm.meta.tau else [[]] * len(rows))
    taus = [[(rows[j]["prompt"], rows[j]["completion"]) for j in chosen] for chosen in picks]
    return gvm.score([r["prompt"] for r in rows], [r["completion"] for r in rows], batch_size=batch_size, taus=taus)


def evaluate_gvm(gvm_dir: str, data: str, split: str = "train", seed: int = 0, batch_size: int = 32) -> dict:
    gvm = load_value_model(gvm_dir)
    rows = load_scored_rows(data, split=split)
    values = token_values(gvm, rows, seed, batch_size)
    return pairwise_accuracy([r["prompt"] for r in rows], [r["score"] for r in rows],
                             [aggregate(v) for v in values])


def format_table(result: dict) -> str:
    header = "| aggregation | " + " | ".join(AGGREGATIONS) + " |"
    rule = "| --- " * (len(AGGREGATIONS) + 1) + "|"
    row = "| accuracy | " + " | ".join(f"{100 * result['accuracy'][a]:.1f}%" for a in AGGREGATIONS) + " |"
    return f"GVM pairwise accuracy on {result['pairs']} pairs\n\n{header}\n{rule}\n{row}\n"


def run_eval_gvm(cfg) -> dict:
    """CLI entry: `dvpo eval gvm`."""
    result = evaluate_gvm(cfg.gvm, cfg.data, cfg.split, cfg.seed, cfg.batch_size)
    print(format_table(result))
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(result, indent=2))
    return result
