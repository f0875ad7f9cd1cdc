"""Monitoring during RL: a score function (`dvpo rl --score-fn`, TRL's reward_funcs convention) on each
step's rollouts (metric `score`) and on held-out prompts (`eval_score`). It is never a training signal. The
loop knows no task: `dvpo demo` and `dvpo compare` pass the lab's judge (`dvpo.pipeline`)."""

from __future__ import annotations

import statistics

import torch

from dvpo.data.formats import load_rows
from dvpo.data.tokenize import encode_prompt
from dvpo.distributed import BatchStats
from dvpo.rollout.sampling import SharedNoise, sample
from dvpo.user_functions import RewardFunction


class PromptScorer:
    """The score function's mean on rollouts and on `eval_prompts`; without a function it scores nothing."""

    def __init__(self, spec: str | None, eval_prompts: str | None = None):
        self.fn = RewardFunction(spec, "--score-fn") if spec else None
        self.eval_prompts = ([row["prompt"] for row in load_rows(eval_prompts, "prompts")]
                             if self.fn and eval_prompts else [])

    def score(self, prompts: list, texts: list[str]) -> dict:
        if self.fn is None:
            return {}
        return {"score": statistics.fmean(self.fn(prompts, texts, [{} for _ in texts]).tolist())}

    @torch.no_grad()
    def evaluate(self, policy, tokenizer, cfg, device, stats: BatchStats | None = None, noise_seed: int = 0,
                 batch_size: int = 64, proxy=None, second=None) -> dict:
        """Held-out prompts sampled at the training temperature; the score function's mean (`eval_score`),
        with `proxy` (the advantage source's own scorer, `proxy(prompts, texts)`) its mean (`eval_proxy_score`),
        and with `second` (`--eval-scorer`, called alike) its mean (`eval_second_score`).

        With several processes each samples its share of every batch, with the batch's shared noise,
        so the score does not depend on the number of processes.
        """
        if not self.eval_prompts:
            return {}
        stats = stats or BatchStats()
        rank, world = (stats.accelerator.process_index, stats.accelerator.num_processes) if stats.accelerator \
            else (0, 1)
        policy.eval()
        total = proxy_total = second_total = 0.0
        count = 0
        for start in range(0, len(self.eval_prompts), batch_size):
            chunk = self.eval_prompts[start:start + batch_size]
            low, high = len(chunk) * rank // world, len(chunk) * (rank + 1) // world
            mine = chunk[low:high]
            rows = mine or chunk[:1]  # no share: sample one row, count none (sharded models need every process)
            batch = sample(policy, [encode_prompt(tokenizer, p) for p in rows], tokenizer.pad_token_id,
                           tokenizer.eos_token_id, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                           noise=SharedNoise(noise_seed * 4099 + start, low if mine else 0, len(chunk)),
                           engine=cfg.rollout_engine)
            texts = [t.strip() for t in tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)]
            if mine:
                total += float(self.fn(mine, texts[:len(mine)], [{} for _ in mine]).sum())
                proxy_total += float(proxy(mine, texts[:len(mine)]).sum()) if proxy else 0.0
                second_total += float(second(mine, texts[:len(mine)]).sum()) if second else 0.0
            count += len(mine)
        total, proxy_total, second_total, count = stats.sum(torch.tensor([total, proxy_total, second_total,
                                                                          float(count)]))
        return {"eval_score": float(total / count),
                **({"eval_proxy_score": float(proxy_total / count)} if proxy else {}),
                **({"eval_second_score": float(second_total / count)} if second else {})}
