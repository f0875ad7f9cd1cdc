"""Scoring during RL: the lab's ground truth on rollouts and on held-out prompts, when prompts are lab prompts
(of any lab task: each prompt is scored by the judge of the task that recognises it)."""

from __future__ import annotations

import statistics

import torch

from dvpo.data.formats import load_rows
from dvpo.data.tokenize import encode_prompt
from dvpo.lab.tasks import judge, task_for_prompt
from dvpo.rollout.sampling import SharedNoise, sample
from dvpo.distributed import BatchStats


def is_lab_prompt(prompt) -> bool:
    """Whether some lab task (dvpo.lab.tasks) recognises `prompt`."""
    return task_for_prompt(prompt) is not None


class PromptScorer:
    """Lab judge for lab prompts; for other data it scores nothing (the source's own metrics remain)."""

    def __init__(self, prompts: list):
        self.prompts = prompts
        self.active = bool(prompts) and all(isinstance(p, str) and is_lab_prompt(p) for p in prompts[:50])

    @classmethod
    def for_eval(cls, path: str | None) -> "PromptScorer | None":
        if not path:
            return None
        return cls([row["prompt"] for row in load_rows(path, "prompts")])

    def score(self, prompts: list, texts: list[str]) -> dict:
        if not self.active:
            return {}
        return {"score": statistics.fmean(judge(p, t) for p, t in zip(prompts, texts))}

    @torch.no_grad()
    def evaluate(self, policy, tokenizer, cfg, device, stats: BatchStats | None = None, noise_seed: int = 0,
                 batch_size: int = 64) -> dict:
        """Held-out prompts sampled at the training temperature; the lab judge's mean.

        With several processes each samples its share of every batch, with the batch's shared noise,
        so the score does not depend on the number of processes.
        """
        if not self.active:
            return {}
        stats = stats or BatchStats()
        rank, world = (stats.accelerator.process_index, stats.accelerator.num_processes) if stats.accelerator \
            else (0, 1)
        policy.eval()
        total = 0.0
        count = 0
        for start in range(0, len(self.prompts), batch_size):
            chunk = self.prompts[start:start + batch_size]
            low, high = len(chunk) * rank // world, len(chunk) * (rank + 1) // world
            mine = chunk[low:high]
            rows = mine or chunk[:1]  # no share: sample one row, count none (sharded models need every process)
            batch = sample(policy, [encode_prompt(tokenizer, p) for p in rows], tokenizer.pad_token_id,
                           tokenizer.eos_token_id, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                           noise=SharedNoise(noise_seed * 4099 + start, low if mine else 0, len(chunk)))
            texts = [t.strip() for t in tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)]
            total += sum(judge(p, t) for p, t in zip(mine, texts))
            count += len(mine)
        total, count = stats.sum(torch.tensor([total, float(count)]))
        return {"eval_score": float(total / count)}
