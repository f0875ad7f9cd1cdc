"""`dvpo rl`: one online loop for every RL algorithm (DVPO, PPO, ReMax, GRPO); only the advantage source differs.

Each step: sample a rollout batch from the policy (KV cache, left padding) -> experience
(old log-probs, reference log-probs, per-token KL, the source's advantages) -> PPO-clip epochs
over minibatches (plus the critic's loss for PPO) -> KL controller update -> metrics, and
periodically evaluation and a checkpoint. Re-running on the same --out resumes exactly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from dvpo.algos.masked import masked_mean, masked_whiten
from dvpo.algos.ppo import AdaptiveKLController, FixedKLController, kl_k1, kl_k3, ppo_clip_loss
from dvpo.config import ConfigError
from dvpo.configs import RlConfig
from dvpo.data.formats import load_rows
from dvpo.data.tokenize import encode_prompt, ensure_pad_token
from dvpo.eval.plots import plot_metrics
from dvpo.eval.rl_eval import PromptScorer
from dvpo.models.loading import load_causal_lm, load_tokenizer
from dvpo.rollout.experience import build_sequences, response_logprobs
from dvpo.rollout.sampling import sample
from dvpo.trainers.advantage_sources import DvpoSource, GrpoSource, PpoSource, RemaxSource
from dvpo.trainers.rl_state import RlCheckpointer, peak_memory_bytes
from dvpo.trainers.run_dir import mark_complete, start_run

logger = logging.getLogger(__name__)


def build_source(cfg: RlConfig, accelerator: Accelerator, policy, tokenizer):
    kl_in_reward = cfg.kl_penalty == "reward"
    if cfg.algo == "dvpo":
        if not cfg.gvm:
            raise ConfigError("--algo dvpo needs --gvm (a folder written by `dvpo gvm`)")
        from dvpo.models.value_model import load_value_model

        gvm = load_value_model(cfg.gvm, device=accelerator.device, dtype=cfg.dtype)
        return DvpoSource(gvm, cfg.dvpo_advantage, cfg.dvpo_normalization, cfg.gamma, kl_in_reward)
    if not cfg.reward_model:
        raise ConfigError(f"--algo {cfg.algo} needs --reward-model (a folder written by `dvpo rm`)")
    from dvpo.models.reward_model import load_reward_model
    from dvpo.models.value_model import build_value_model

    reward_model = load_reward_model(cfg.reward_model, device=accelerator.device, dtype=cfg.dtype)
    if cfg.algo == "grpo":
        if cfg.rollout_batch_size % cfg.group_size:
            raise ConfigError(f"--rollout-batch-size {cfg.rollout_batch_size} must be a multiple of "
                              f"--group-size {cfg.group_size}")
        return GrpoSource(reward_model, cfg.group_size)
    if cfg.algo == "remax":
        return RemaxSource(reward_model, policy, tokenizer, cfg.max_new_tokens, kl_in_reward)
    critic_init = cfg.critic_init or _default_critic_init(cfg)
    critic = build_value_model(critic_init, cfg.dtype).to(accelerator.device)
    return PpoSource(reward_model, critic, cfg.gamma, cfg.gae_lambda, cfg.value_clip, kl_in_reward)


def _default_critic_init(cfg: RlConfig) -> str:
    """The reward model's own weights when it was fully fine-tuned (N+ details), else the policy."""
    full_rm = Path(cfg.reward_model) / "model" / "config.json"
    return str(full_rm.parent) if full_rm.is_file() else cfg.policy


def prompt_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled prompt order of one pass; a function of (seed, epoch), so resume needs only the step."""
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def batch_prompts(prompts: list, step: int, batch_size: int, seed: int) -> list:
    start = step * batch_size
    picked = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, len(prompts))
        picked.append(prompts[prompt_order(len(prompts), seed, epoch)[offset]])
    return picked


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, forget the log lines of steps after the checkpoint (they will be run again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def run_rl(cfg: RlConfig) -> Path:
    folder, _ = start_run(cfg)  # the loop restores its own checkpoints
    trackers = None if cfg.report_to == "none" else [cfg.report_to]
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers, project_dir=str(folder))
    if trackers:
        accelerator.init_trackers("dvpo-rl", config=asdict(cfg))
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.policy)
    ensure_pad_token(tokenizer)
    prompts = [row["prompt"] for row in load_rows(cfg.prompts, "prompts", split=cfg.split)]
    if len(prompts) < 2:
        raise ValueError(f"{cfg.prompts}: RL needs at least two prompts")
    policy = load_causal_lm(cfg.policy, cfg.dtype).to(accelerator.device)
    reference = load_causal_lm(cfg.policy, cfg.dtype).to(accelerator.device).eval().requires_grad_(False)
    source = build_source(cfg, accelerator, policy, tokenizer)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    critic_optimizer = (torch.optim.AdamW(source.trainable[0].parameters(),
                                          lr=cfg.critic_learning_rate or cfg.learning_rate, eps=1e-5)
                        if source.trainable else None)
    controller = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
                  else FixedKLController(cfg.kl_coef))
    checkpointer = RlCheckpointer(folder, cfg.keep_checkpoints)
    start_step = checkpointer.restore(policy, optimizer, source.trainable, critic_optimizer, controller)
    scorer = PromptScorer(prompts)
    evaluator = PromptScorer.for_eval(cfg.eval_prompts)
    metrics_path = folder / "metrics.jsonl"
    truncate_metrics(metrics_path, start_step)

    progress = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc=f"rl {cfg.algo}")
    for step in progress:
        record = rl_step(cfg, step, policy, reference, source, optimizer, critic_optimizer, controller, tokenizer,
                         prompts, scorer)
        if evaluator and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps):
            record.update(evaluator.evaluate(policy, tokenizer, cfg, accelerator.device))
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if trackers:
            accelerator.log(record, step=step + 1)
        progress.set_postfix({k: round(record[k], 3) for k in ("score", "kl", "eval_score") if k in record})
        if not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite metric at step {step}: {record}; "
                                     f"the last good checkpoint is kept in {folder / 'checkpoints'}")
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            checkpointer.save(step + 1, policy, optimizer, source.trainable, critic_optimizer, controller)
    policy.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    plot_metrics(metrics_path, ("score", "eval_score", "reward_mean", "kl", "kl_coef", "entropy",
                                "response_length", "clip_frac"), folder / "metrics.png")
    if trackers:
        accelerator.end_training()
    mark_complete(folder, stage="rl", algo=cfg.algo, steps=cfg.steps)
    return folder


def rl_step(cfg, step, policy, reference, source, optimizer, critic_optimizer, controller, tokenizer, prompts,
            scorer) -> dict:
    timings = {}
    started = time.perf_counter()
    group = source.samples_per_prompt
    unique_prompts = batch_prompts(prompts, step, cfg.rollout_batch_size // group, cfg.seed)
    batch_of_prompts = [p for p in unique_prompts for _ in range(group)]  # prompt-major, as sampled
    policy.eval()
    sampled = sample(policy, [encode_prompt(tokenizer, p) for p in unique_prompts], tokenizer.pad_token_id,
                     tokenizer.eos_token_id, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                     num_samples=group, min_new_tokens=cfg.min_new_tokens)
    seq = build_sequences(sampled)
    texts = [t.strip() for t in tokenizer.batch_decode(seq.response_ids, skip_special_tokens=True)]
    timings["time_generation"] = time.perf_counter() - started

    started = time.perf_counter()
    mask = seq.response_mask
    with torch.no_grad():
        old_logp = response_logprobs(policy, seq, cfg.temperature)
        ref_logp = response_logprobs(reference, seq, cfg.temperature)
    kl = kl_k1(old_logp, ref_logp) * mask
    experience = source.experience(seq, batch_of_prompts, texts, kl, controller.value)
    if cfg.whiten_advantages == "on" or (cfg.whiten_advantages == "auto" and cfg.algo == "ppo"):
        experience.advantages = masked_whiten(experience.advantages, mask)
    timings["time_forward"] = time.perf_counter() - started

    started = time.perf_counter()
    policy.train()
    for trained in source.trainable:
        trained.train()
    update_stats: dict[str, list[float]] = {}
    n = seq.input_ids.shape[0]
    for _ in range(cfg.ppo_epochs):
        for index in torch.randperm(n).split(cfg.mini_batch_size):
            mb_seq, mb_exp = seq.rows(index), experience.rows(index)
            logp, entropy = response_logprobs(policy, mb_seq, cfg.temperature, with_entropy=True)
            loss, stats = ppo_clip_loss(logp, old_logp[index], mb_exp.advantages, mb_seq.response_mask, cfg.clip_eps)
            if cfg.kl_penalty == "loss" or cfg.algo == "grpo":
                loss = loss + controller.value * masked_mean(kl_k3(logp, ref_logp[index]), mb_seq.response_mask)
            value_loss, value_stats = source.value_loss(mb_seq, mb_exp)
            if value_loss is not None:
                loss = loss + cfg.vf_coef * value_loss
            optimizer.zero_grad(set_to_none=True)
            if critic_optimizer:
                critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            if critic_optimizer:
                torch.nn.utils.clip_grad_norm_(source.trainable[0].parameters(), 1.0)
                critic_optimizer.step()
            for key, value in {"clip_frac": float(stats["clip_frac"]), "approx_kl": float(stats["approx_kl"]),
                               "entropy": masked_mean(entropy, mb_seq.response_mask).item(),
                               "policy_loss": loss.item(), **value_stats}.items():
                update_stats.setdefault(key, []).append(value)
    timings["time_update"] = time.perf_counter() - started

    sequence_kl = kl.sum(dim=1).mean().item()
    kl_coef = controller.value
    controller.update(sequence_kl, n)
    record = {"step": step + 1, "kl": sequence_kl, "kl_coef": kl_coef,
              "response_length": mask.sum(dim=1).mean().item(), **experience.metrics,
              **{k: sum(v) / len(v) for k, v in update_stats.items()}, **timings,
              "time_step": sum(timings.values()), "peak_memory_bytes": peak_memory_bytes()}
    record.update(scorer.score(batch_of_prompts, texts))
    return record
