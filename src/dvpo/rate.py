"""`dvpo rate`: sample responses from one or more models and score them with any scorer (reward functions,
a reward model, or an LLM judge) into rated rows: `prompt`, `completion`, `score`, `policy`.

That is the data a GVM learns from, so any scorer opens the way `rate -> gvm -> rl --algo dvpo`. The GVM
conditions on tau, another response of the same policy, so several models of different quality (each its
own `policy`) teach it more than one. Rows are appended batch by batch once scored; re-running the same
command skips the (model, prompt) pairs already rated, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dvpo.errors import ConfigError
from dvpo.stage_options import RateConfig
from dvpo.data.formats import load_rows
from dvpo.data.tokenize import encode_prompt, ensure_pad_token
from dvpo.models.loading import default_device, load_causal_lm, load_tokenizer
from dvpo.rollout.sampling import SharedNoise, sample

logger = logging.getLogger(__name__)


def check_options(cfg: RateConfig) -> list[str]:
    """The policy name of each model, after every cross-field check (before anything is loaded or written)."""
    if cfg.samples < 1 or cfg.batch_size < 1:
        raise ConfigError(f"--samples and --batch-size must be at least 1, got {cfg.samples} and {cfg.batch_size}")
    judged = bool(cfg.judge_endpoint or cfg.judge_model)
    if judged and not (cfg.judge_endpoint and cfg.judge_model):
        raise ConfigError("an LLM judge needs both --judge-endpoint and --judge-model")
    if judged and (cfg.reward_fn or cfg.reward_model):
        raise ConfigError("rate with an LLM judge, or with reward functions and/or a reward model, not both")
    if not judged and not (cfg.reward_fn or cfg.reward_model):
        raise ConfigError("name a scorer: --reward-fn, --reward-model, or --judge-endpoint with --judge-model")
    if cfg.reward_weights and len(cfg.reward_weights) != len(cfg.reward_fn):
        raise ConfigError(f"--reward-weights has {len(cfg.reward_weights)} value(s) for {len(cfg.reward_fn)} "
                          "--reward-fn function(s)")
    names = list(cfg.names) or [Path(m).name or m for m in cfg.model]
    if len(names) != len(cfg.model):
        raise ConfigError(f"--names has {len(names)} name(s) for {len(cfg.model)} --model(s)")
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated:
        raise ConfigError(f"two models share the policy name {repeated[0]!r}: give distinct --names")
    return names


class Scorer:
    """Scores of (prompts, completions, other prompt fields): reward functions and/or a reward model (its raw
    score), or an LLM judge's 0-5 (None where its reply had no parsable score)."""

    def __init__(self, cfg: RateConfig):
        self.judge = None
        if cfg.judge_endpoint:
            from dvpo.eval.llm_judge import JudgeClient, ReplyCache

            out = Path(cfg.out)
            api_key = os.environ.get(cfg.api_key_env) or None
            self.judge = JudgeClient(cfg.judge_endpoint, cfg.judge_model, api_key)
            self.cache = ReplyCache(out.with_name(out.stem + ".judge_cache.jsonl"))
        else:
            from dvpo.trainers.sources.scoring import SequenceScorer
            from dvpo.user_functions import RewardFunction

            reward_model = None
            if cfg.reward_model:
                from dvpo.models.reward_model import load_reward_model

                reward_model = load_reward_model(cfg.reward_model, device=default_device(), dtype=cfg.dtype)
            self.sequence_scorer = SequenceScorer(reward_model, normalize=False,
                                                  functions=[RewardFunction(s) for s in cfg.reward_fn],
                                                  function_weights=cfg.reward_weights)

    def __call__(self, prompts: list, completions: list[str], columns: list[dict]) -> list[float | None]:
        if self.judge is None:
            return self.sequence_scorer(None, prompts, completions, columns).tolist()
        from dvpo.eval.llm_judge import ask_all, judge_absolute

        _, results = judge_absolute([{"prompt": p, "completion": c} for p, c in zip(prompts, completions)],
                                    lambda requests: ask_all(self.judge, self.cache, requests, concurrency=8))
        return [r["score"] for r in results]

    def close(self) -> None:
        if self.judge is not None:
            self.judge.__exit__(None, None, None)


def rated_so_far(out: Path) -> Counter:
    """How many responses each (policy, prompt) already has in `out` (and in its excluded file); a last line
    cut short by a kill is removed, since its batch is sampled again."""
    done: Counter = Counter()
    for path in (out, excluded_path(out)):
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            logger.warning("%s: dropping a last line cut short by an interrupted run", path)
            path.write_text("".join(lines[:-1]), encoding="utf-8")
            lines = lines[:-1]
        for line in lines:
            row = json.loads(line)
            done[(row["policy"], repr(row["prompt"]))] += 1
    return done


def excluded_path(out: Path) -> Path:
    """Where sampled responses that rated data cannot hold go, each with its reason: nothing is dropped."""
    return out.with_name(out.stem + ".excluded.jsonl")


def run_rate(cfg: RateConfig) -> Path:
    names = check_options(cfg)
    rows = load_rows(cfg.prompts, "prompts", split=cfg.split)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = rated_so_far(out)
    scorer = Scorer(cfg)
    written = left_out = 0
    try:
        for m, (model_name, policy) in enumerate(zip(cfg.model, names)):
            todo = [i for i, r in enumerate(rows) if done[(policy, repr(r["prompt"]))] < cfg.samples]
            if not todo:
                logger.info("%s: every prompt already rated", policy)
                continue
            if len(todo) < len(rows):
                logger.info("%s: resuming, %d of %d prompts left", policy, len(todo), len(rows))
            tokenizer = load_tokenizer(model_name)
            ensure_pad_token(tokenizer)
            model = load_causal_lm(model_name, cfg.dtype).to(default_device()).eval()
            for start in tqdm(range(0, len(todo), cfg.batch_size), desc=f"rate {policy}", unit="batch"):
                chunk = todo[start:start + cfg.batch_size]
                with torch.no_grad():
                    batch = sample(model, [encode_prompt(tokenizer, rows[i]["prompt"]) for i in chunk],
                                   tokenizer.pad_token_id, tokenizer.eos_token_id, cfg.max_new_tokens,
                                   cfg.temperature, cfg.top_p, cfg.samples,
                                   noise=SharedNoise((cfg.seed * 1_000_003 + m) * 1_000_003 + chunk[0]),
                                   engine=cfg.rollout_engine)
                texts = [t.strip() for t in tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)]
                picked = [rows[i] for i in chunk for _ in range(cfg.samples)]  # prompt-major, as sampled
                prompts = [r["prompt"] for r in picked]
                columns = [{k: v for k, v in r.items() if k != "prompt"} for r in picked]
                scores = scorer(prompts, texts, columns)
                rated = [{"prompt": p, "completion": c, "score": s, "policy": policy}
                         for p, c, s in zip(prompts, texts, scores)]
                good = [r for r in rated if r["score"] is not None and r["completion"].strip()]
                excluded = [{**r, "reason": "no judge score" if r["score"] is None else "empty completion"}
                            for r in rated if r["score"] is None or not r["completion"].strip()]
                _append(out, good)
                _append(excluded_path(out), excluded)
                written, left_out = written + len(good), left_out + len(excluded)
            del model
    finally:
        scorer.close()
    if left_out:
        logger.warning("%d responses are not in %s (empty, which rated data cannot hold, or without a parsable "
                       "judge score); they are kept, with the reason, in %s", left_out, out, excluded_path(out))
    logger.info("rated %d new responses into %s (%d models x %d prompts x %d samples asked in all)", written, out,
                len(cfg.model), len(rows), cfg.samples)
    return out


def _append(path: Path, rows: list[dict]) -> None:
    """One write per batch, flushed, so a kill leaves at most a cut last line (dropped on resume)."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
