"""`dvpo rl`: one online loop for every RL algorithm (DVPO, PPO, ReMax, GRPO); only the advantage source differs.

Each step: sample a rollout batch from the policy (KV cache, left padding) -> experience
(old log-probs, reference log-probs, per-token KL, the source's advantages) -> PPO-clip epochs
over minibatches (plus the critic's loss for PPO) -> KL controller update -> metrics, and
periodically evaluation and a checkpoint. Re-running on the same --out resumes exactly.

With several processes (`accelerate launch`), each takes a contiguous share of the step's
prompts; sampling noise is drawn for the global batch (see `dvpo.rollout.sampling`), batch
statistics and the loss's token mean span all processes, and gradients are averaged, so N
processes reproduce the single-process run when each epoch is one minibatch (with several
minibatches, each process shuffles its own share). Only the main process writes files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from dvpo.algos.masked import masked_mean
from dvpo.algos.ppo import AdaptiveKLController, FixedKLController, kl_k3, ppo_clip_loss
from dvpo.data.formats import load_rows
from dvpo.data.tokenize import encode_prompt, ensure_pad_token
from dvpo.distributed import BatchStats, deepspeed_requested, make_accelerator, parameters_held, shard_bounds
from dvpo.errors import ConfigError, NonFiniteLoss, PolicyRunaway, RunInterrupted
from dvpo.eval.plots import plot_metrics
from dvpo.eval.rl_eval import PromptScorer
from dvpo.models.frozen import AdapterOff
from dvpo.models.loading import load_causal_lm, load_tokenizer
from dvpo.models.tokenizer_match import check_scorer_tokenizers
from dvpo.rollout.experience import (Experience, ExperienceMaker, Rollout, build_sequences, clipped_rows,
                                     response_logprobs)
from dvpo.rollout.sampling import SharedNoise, sample
from dvpo.stage_options import RlConfig
from dvpo.trainers.common import write_process_record
from dvpo.trainers.events import RlEvents
from dvpo.trainers.interrupts import STOP
from dvpo.trainers.metrics import peak_memory_bytes
from dvpo.trainers.rl_state import RlCheckpointer
from dvpo.trainers.run_dir import CHECKPOINTS, mark_complete, start_run
from dvpo.trainers.runaway import RunawayGuard
from dvpo.trainers.trackers import report_targets, tracker_config
from dvpo.trainers.sources import source_class
from dvpo.trainers.sources.base import kl_enters_loss
from dvpo.trainers.sources.second_scorer import SecondScorer, second_scorer_kind
from dvpo.user_functions import load_function

logger = logging.getLogger(__name__)
CLIPPED_WARNING = 0.25  # share of a step's responses cut at --max-new-tokens that earns the run's one warning


def load_policy_and_reference(cfg: RlConfig, device):
    """The trained policy and the frozen reference (a second copy, or the policy with adapters off under LoRA)."""
    if cfg.fsdp and cfg.lora_r > 0:
        raise ConfigError("--fsdp shards full-weight training; LoRA (--lora-r) trains small adapters: use DDP")
    policy = load_causal_lm(cfg.policy, cfg.dtype, fsdp=cfg.fsdp).to(device)
    if cfg.gradient_checkpointing:
        policy.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                   lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                                                   target_modules="all-linear"))
        return policy, AdapterOff(policy)
    return policy, load_causal_lm(cfg.policy, cfg.dtype, fsdp=cfg.fsdp).to(device).eval().requires_grad_(False)


def check_config(cfg: RlConfig, world: int) -> None:
    """Every cross-field check, before any file is written: the algorithm's own (an option it would ignore, a
    signal it lacks), then whether the rollout batch splits into whole prompt groups per process and the
    minibatches evenly."""
    source_class(cfg.algo).check(cfg)
    check_scorer_tokenizers(cfg, ensure_pad_token(load_tokenizer(cfg.policy)))
    if cfg.eval_prompts and not cfg.score_fn:
        raise ConfigError("--eval-prompts are scored by --score-fn: name the function (for lab prompts, "
                          "dvpo.lab.tasks:judge_completions)")
    if cfg.score_fn:
        load_function(cfg.score_fn, "--score-fn")
    if cfg.eval_scorer:
        second_scorer_kind(cfg.eval_scorer)
    if cfg.rollout_engine == "static" and cfg.fsdp:
        raise ConfigError("--rollout-engine static needs whole weights on each process; --fsdp shards them: "
                          "use hf or auto")
    if cfg.keep_checkpoints < 1:
        raise ConfigError(f"--keep-checkpoints must be at least 1, got {cfg.keep_checkpoints}")
    group = source_class(cfg.algo).samples_per_prompt(cfg)
    if cfg.rollout_batch_size % (group * world):
        raise ConfigError(f"--rollout-batch-size {cfg.rollout_batch_size} must be a multiple of "
                          f"{'--group-size ' + str(group) + ' x ' if group > 1 else ''}{world} process(es)")
    local = cfg.rollout_batch_size // world
    if cfg.mini_batch_size % world or local % (cfg.mini_batch_size // world):
        raise ConfigError(f"--mini-batch-size {cfg.mini_batch_size} must split evenly over {world} process(es) "
                          f"and divide the rollout batch {cfg.rollout_batch_size}")


def prompt_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled prompt order of one pass; a function of (seed, epoch), so resume needs only the step."""
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the prompts of one step: consecutive slices of seeded passes over the n prompts."""
    picked = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        picked.append(prompt_order(n, seed, epoch)[offset])
    return picked


def batch_prompts(prompts: list, step: int, batch_size: int, seed: int) -> list:
    return [prompts[i] for i in batch_indices(len(prompts), step, batch_size, seed)]


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed per (run seed, step, purpose): the randomness of a step needs no saved generator state."""
    return (seed * 1_000_003 + step) * 8 + stream


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, forget the log lines of steps after the checkpoint (they will be run again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def make_optimizer(parameters, name: str, lr: float):
    """AdamW (eps 1e-5, the N+ details), or Adafactor as the authors' code builds it: at a fixed learning rate,
    without relative steps or parameter scaling."""
    parameters = [p for p in parameters if p.requires_grad]
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(parameters, lr=lr, eps=1e-5)


def schedule_factor(schedule: str, step: int, steps: int) -> float:
    """The learning rate of 0-based `step` over the peak: constant, or linear decay to 0 at `steps` (no warm-up,
    transformers' `get_linear_schedule_with_warmup`); a function of the step, so a resumed run needs no state."""
    return max(0.0, 1.0 - step / steps) if schedule == "linear" else 1.0


def prepare_models(cfg: RlConfig, accelerator, policy, source):
    """Wrap the trained modules for data parallelism (DDP or DeepSpeed); frozen ones stay as they are.
    Under --fsdp the models were sharded as they loaded and only get their optimizers. What the source
    trains beside the policy (PPO's critic) shares one optimizer."""
    optimizer = make_optimizer(policy.parameters(), cfg.optimizer, cfg.learning_rate)
    trained = list(source.trainable)
    side_optimizer = (make_optimizer([p for m in trained for p in m.parameters()], cfg.optimizer,
                                     cfg.critic_learning_rate or cfg.learning_rate) if trained else None)
    if cfg.fsdp:
        return policy, optimizer, side_optimizer
    if not trained:
        policy, optimizer = accelerator.prepare(policy, optimizer)
        return policy, optimizer, None
    if deepspeed_requested():
        raise ConfigError(f"--algo {cfg.algo} trains a model beside the policy, and one DeepSpeed engine holds one "
                          "model: run it with DDP (configs/accelerate/ddp.yaml) or a single process")
    policy, optimizer, *trained, side_optimizer = accelerator.prepare(policy, optimizer, *trained, side_optimizer)
    source.use_trained(trained)
    return policy, optimizer, side_optimizer


@dataclass
class RlRun:
    """What the loop and the final save share, built once by `set_up`."""

    cfg: RlConfig
    accelerator: object
    folder: Path
    tokenizer: object
    policy: object
    controller: object
    guard: RunawayGuard
    checkpointer: RlCheckpointer
    loop: "RlLoop"
    start_step: int
    trainer_state: object  # the callbacks' TrainerState of the restored checkpoint, or None
    trackers: list | None

    @property
    def metrics_path(self) -> Path:
        return self.folder / "metrics.jsonl"


def run_rl(cfg: RlConfig, callbacks=()) -> Path:
    """The whole stage; `callbacks` are transformers `TrainerCallback`s (see `dvpo.trainers.events`)."""
    run = set_up(cfg)
    events = RlEvents(callbacks, cfg, run.start_step, run.policy, run.tokenizer, run.accelerator,
                     run.trainer_state)
    last_metrics = train(run, events)
    folder = save(run, last_metrics)
    events.train_end()
    return folder


def set_up(cfg: RlConfig) -> RlRun:
    """Every check before any file is written; then the folder, the models, the source, the optimizers and the
    last checkpoint's state."""
    trackers = report_targets(cfg.report_to) or None
    accelerator = make_accelerator(log_with=trackers, project_dir=str(cfg.out))
    check_config(cfg, accelerator.num_processes)
    folder, _ = start_run(cfg)  # the loop restores its own checkpoints
    if accelerator.state.deepspeed_plugin is not None:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.mini_batch_size // accelerator.num_processes
        ds_config["gradient_accumulation_steps"] = 1
        ds_config["gradient_clipping"] = 1.0
    if trackers:
        accelerator.init_trackers("dvpo-rl", config=tracker_config(cfg))
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.policy)
    ensure_pad_token(tokenizer)
    rows = load_rows(cfg.prompts, "prompts", split=cfg.split)
    if len(rows) < 2:
        raise ValueError(f"{cfg.prompts}: RL needs at least two prompts")
    policy, reference = load_policy_and_reference(cfg, accelerator.device)
    source, reference = source_class(cfg.algo).build(cfg, accelerator.device, policy, reference, tokenizer)
    policy, optimizer, side_optimizer = prepare_models(cfg, accelerator, policy, source)
    controller = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
                  else FixedKLController(cfg.kl_coef))
    sharded = [(policy, optimizer), *((module, side_optimizer) for module in source.trainable)]
    checkpointer = RlCheckpointer(folder, cfg.keep_checkpoints, accelerator, sharded if cfg.fsdp else [])
    guard = RunawayGuard(cfg.max_kl, cfg.max_length_ratio)
    start_step, trainer_state = checkpointer.restore(controller, guard)
    second = SecondScorer(cfg.eval_scorer, accelerator.device, cfg.dtype, tokenizer) if cfg.eval_scorer else None
    loop = RlLoop(cfg, accelerator, policy, reference, source, optimizer, side_optimizer, controller, tokenizer,
                  rows, second)
    return RlRun(cfg, accelerator, folder, tokenizer, policy, controller, guard, checkpointer, loop, start_step,
                 trainer_state, trackers)


def train(run: RlRun, events: RlEvents | None = None) -> dict:
    """The steps from the last checkpoint on: log each, evaluate, guard against a runaway policy, checkpoint, and
    stop cleanly on a signal. Returns the last step's metrics."""
    cfg, accelerator, loop = run.cfg, run.accelerator, run.loop
    events = events or RlEvents((), cfg, run.start_step, run.policy, run.tokenizer, accelerator, run.trainer_state)
    events.train_begin()
    record = {}
    main_process = accelerator.is_main_process
    if main_process:
        truncate_metrics(run.metrics_path, run.start_step)
    accelerator.wait_for_everyone()
    progress = tqdm(range(run.start_step, cfg.steps), initial=run.start_step, total=cfg.steps,
                    desc=f"rl {cfg.algo}", disable=not main_process)
    for step in progress:
        record = loop.step(step)
        due = (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps
        if loop.scorer.eval_prompts and due:
            record.update(loop.scorer.evaluate(accelerator.unwrap_model(run.policy), run.tokenizer, cfg,
                                               accelerator.device, loop.stats,
                                               noise_seed=step_seed(cfg.seed, step, 2), proxy=loop.source.proxy,
                                               second=loop.second))
        runaway = None
        try:
            run.guard.check(record, str(run.checkpointer.root))
        except PolicyRunaway as error:
            runaway = error
        if main_process:
            with open(run.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if runaway:
            raise runaway
        if run.trackers:
            accelerator.log(record, step=step + 1)
        events.step_end(step + 1, record)
        progress.set_postfix({k: round(record[k], 3) for k in ("score", "kl", "eval_score") if k in record})
        if not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite metric at step {step + 1}: {record}; "
                                     f"the last good checkpoint is kept in {run.checkpointer.root}")
        stop_asked, save_asked = events.requests(loop.stats)
        if stop_asked and step + 1 < cfg.steps:
            logger.info("a callback stopped the run after step %d of %d (control.should_training_stop)", step + 1,
                        cfg.steps)
            break
        last = step + 1 == cfg.steps
        periodic = (step + 1) % cfg.save_every == 0 or save_asked
        if periodic and not last:
            run.checkpointer.save(step + 1, run.controller, run.guard, events.state)
            events.save()
        signum = None if last else STOP.requested()
        if signum:
            if not periodic:
                run.checkpointer.save(step + 1, run.controller, run.guard, events.state)
                events.save()
            raise RunInterrupted(signum, step + 1, run.checkpointer.root)
    return record


def save(run: RlRun, last_metrics: dict | None = None) -> Path:
    """The trained policy as a plain model folder (LoRA merged), its tokenizer, processes.json, metrics.png,
    and the completion marker last (with the last step's metrics)."""
    cfg, accelerator, folder = run.cfg, run.accelerator, run.folder
    steps = (last_metrics or {}).get("step", cfg.steps)  # fewer when a callback stopped the run
    main_process = accelerator.is_main_process
    final = accelerator.unwrap_model(run.policy)
    write_process_record(folder, {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
                                  "distributed_type": accelerator.distributed_type.value, "fsdp": cfg.fsdp,
                                  "parameters_held": parameters_held(final), "rows": run.loop.my_rows(steps)},
                         accelerator.num_processes, main_process)
    accelerator.wait_for_everyone()
    if cfg.fsdp:
        final.save_pretrained(folder)  # every process: transformers gathers the shards, the main one writes
    else:
        if cfg.lora_r > 0:
            final = final.merge_and_unload()  # a plain model, like every other stage writes
            state = final.state_dict()
        else:
            state = accelerator.get_state_dict(run.policy)  # gathers ZeRO-3 shards on every process
        if main_process:
            final.save_pretrained(folder, state_dict=state)
    if main_process:
        run.tokenizer.save_pretrained(folder)
        plot_metrics(run.metrics_path, ("score", "eval_score", "proxy_score", "second_score", "kl", "kl_coef",
                                        "entropy", "response_length", "length_ratio", "clip_frac"),
                     folder / "metrics.png")
    if run.trackers:
        accelerator.end_training()
    if main_process:
        mark_complete(folder, stage="rl", algo=cfg.algo, steps=steps, processes=accelerator.num_processes,
                      **{f"final_{key}": value for key, value in (last_metrics or {}).items() if key != "step"})
    accelerator.wait_for_everyone()
    return folder


class RlLoop:
    """One RL step on this process's share of the rollout batch."""

    def __init__(self, cfg, accelerator, policy, reference, source, optimizer, side_optimizer, controller,
                 tokenizer, rows, second: SecondScorer | None = None):
        self.cfg, self.accelerator, self.policy = cfg, accelerator, policy
        self.source, self.optimizer, self.side_optimizer = source, optimizer, side_optimizer
        self.controller, self.tokenizer = controller, tokenizer
        self.prompts = [row["prompt"] for row in rows]
        self.columns = [{k: v for k, v in row.items() if k != "prompt"} for row in rows]  # for reward functions
        self.scorer = PromptScorer(cfg.score_fn, cfg.eval_prompts)
        self.second = second  # --eval-scorer: watches, never trains
        self.stats = BatchStats(accelerator)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.local_mini = cfg.mini_batch_size // self.world  # this process's rows per minibatch
        whiten = cfg.whiten_advantages == "on" or (cfg.whiten_advantages == "auto" and source.whiten_default)
        self.one_update = cfg.ppo_epochs == 1 and cfg.mini_batch_size >= cfg.rollout_batch_size
        self.kl_in_loss = kl_enters_loss(cfg, source)
        self.maker = ExperienceMaker(policy, reference, source, self.stats, cfg.temperature, self.local_mini, whiten,
                                     self.one_update, unwrap=accelerator.unwrap_model)
        self.warned_clipped = False

    def step_indices(self, step: int) -> list[int]:
        """Indices of the step's distinct prompts (every process's), in rollout order."""
        group = self.source.samples_per_prompt(self.cfg)
        return batch_indices(len(self.prompts), step, self.cfg.rollout_batch_size // group, self.cfg.seed)

    def my_rows(self, steps: int) -> list[int]:
        """The prompt indices this process samples over the whole run (resumed or not), for processes.json."""
        rows = []
        for step in range(steps):
            indices = self.step_indices(step)
            start, end = shard_bounds(len(indices), self.rank, self.world)
            rows += indices[start:end]
        return rows

    def rollout(self, step: int) -> Rollout:
        cfg, group = self.cfg, self.source.samples_per_prompt(self.cfg)
        indices = self.step_indices(step)
        unique_prompts = [self.prompts[i] for i in indices]
        start, end = shard_bounds(len(unique_prompts), self.rank, self.world)
        mine = unique_prompts[start:end]
        policy = self.accelerator.unwrap_model(self.policy).eval()
        sampled = sample(policy, [encode_prompt(self.tokenizer, p) for p in mine], self.tokenizer.pad_token_id,
                         self.tokenizer.eos_token_id, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                         num_samples=group, min_new_tokens=cfg.min_new_tokens,
                         noise=SharedNoise(step_seed(cfg.seed, step, 0), start * group, cfg.rollout_batch_size),
                         engine=cfg.rollout_engine)
        seq = build_sequences(sampled)
        texts = [t.strip() for t in self.tokenizer.batch_decode(seq.response_ids, skip_special_tokens=True)]
        all_prompts = [p for p in unique_prompts for _ in range(group)]  # prompt-major, as sampled
        all_texts = [t for chunk in gather_object([texts]) for t in chunk] if self.world > 1 else texts
        columns = [self.columns[i] for i in indices[start:end] for _ in range(group)]
        return Rollout(seq, all_prompts[start * group:end * group], texts, all_prompts, all_texts, start * group,
                       self.stats, columns, seed=step_seed(cfg.seed, step, 3))

    def step(self, step: int) -> dict:
        cfg, timings = self.cfg, {}
        started = time.perf_counter()
        rollout = self.rollout(step)
        mask = rollout.seq.response_mask
        timings["time_generation"] = time.perf_counter() - started

        started = time.perf_counter()
        experience, live = self.maker.make(rollout, 0.0 if self.kl_in_loss else self.controller.value)
        timings["time_forward"] = time.perf_counter() - started

        started = time.perf_counter()
        update_stats = self.update(step, experience, live)
        timings["time_update"] = time.perf_counter() - started

        kl_coef = self.controller.value
        clipped = clipped_rows(rollout.seq.response_ids, mask, self.tokenizer.eos_token_id).float().mean().item()
        local = {"kl": experience.kl.sum(dim=1).mean().item(), "response_length": mask.sum(dim=1).mean().item(),
                 "clipped_ratio": clipped,
                 **experience.metrics, **update_stats, **self.scorer.score(rollout.prompts, rollout.texts)}
        if self.second is not None:  # a frozen model the run holds: its time counts in the step's, as its memory
            started = time.perf_counter()
            local["second_score"] = self.second.rollout_score(rollout)
            timings["time_second_scorer"] = time.perf_counter() - started
        record = {"step": step + 1, **self.stats.mean_of(local), "kl_coef": kl_coef, **timings,
                  "time_step": sum(timings.values()), "peak_memory_bytes": peak_memory_bytes()}
        self.controller.update(record["kl"], cfg.rollout_batch_size)
        self.warn_if_clipped(record["clipped_ratio"], step)
        return record

    def warn_if_clipped(self, ratio: float, step: int) -> None:
        """Once a run: a response cut at the cap is scored and learned from as if it were finished."""
        if ratio >= CLIPPED_WARNING and not self.warned_clipped and self.accelerator.is_main_process:
            self.warned_clipped = True
            logger.warning("step %d: %.0f%% of the responses reached --max-new-tokens %d without EOS and were cut; "
                           "raise it if the task's answers are longer (clipped_ratio in metrics.jsonl)",
                           step + 1, 100 * ratio, self.cfg.max_new_tokens)

    def update(self, step: int, experience: Experience, live=None) -> dict[str, float]:
        """PPO-clip epochs over minibatches; the loss is a token mean over the minibatch of every process.

        `live`: (log-probs, entropy) of the whole batch with their graph, when one update covers the batch.
        """
        cfg = self.cfg
        factor = schedule_factor(cfg.lr_scheduler, step, cfg.steps)
        for optimizer, peak in ((self.optimizer, cfg.learning_rate),
                                (self.side_optimizer, cfg.critic_learning_rate or cfg.learning_rate)):
            for group in (optimizer.param_groups if optimizer else []):
                group["lr"] = peak * factor
        self.policy.train()
        for trained in self.source.trainable:
            trained.train()
        collected: dict[str, list[float]] = {}
        n = experience.seq.input_ids.shape[0]
        shuffle = torch.Generator().manual_seed(step_seed(cfg.seed, step, 1) * 64 + self.rank)
        for _ in range(cfg.ppo_epochs):
            order = torch.arange(n) if live is not None else torch.randperm(n, generator=shuffle)
            for index in order.split(self.local_mini):
                minibatch = experience.rows(index)
                mb_mask = minibatch.mask
                tokens = mb_mask.sum()
                scale = (tokens * self.world / self.stats.sum(tokens.reshape(1))[0].clamp(min=1)).to(tokens.dtype)
                logp, entropy = live if live is not None else response_logprobs(self.policy, minibatch.seq,
                                                                                cfg.temperature, with_entropy=True)
                loss, stats = ppo_clip_loss(logp, minibatch.old_logp, minibatch.advantages, mb_mask, cfg.clip_eps)
                if self.kl_in_loss:
                    loss = loss + self.controller.value * masked_mean(kl_k3(logp, minibatch.ref_logp), mb_mask)
                value_loss, value_stats = self.source.value_loss(minibatch)
                if value_loss is not None:
                    loss = loss + cfg.vf_coef * value_loss
                total = self.stats.sum(loss.detach().reshape(1))[0]  # every process sees a NaN anywhere
                if not torch.isfinite(total):
                    raise NonFiniteLoss(step + 1, float(total), Path(cfg.out) / CHECKPOINTS)
                self.optimizer.zero_grad(set_to_none=True)
                if self.side_optimizer:
                    self.side_optimizer.zero_grad(set_to_none=True)
                self.accelerator.backward(loss * scale)
                self.accelerator.clip_grad_norm_(self.policy.parameters(), 1.0)
                self.optimizer.step()
                if self.side_optimizer:
                    self.accelerator.clip_grad_norm_([p for m in self.source.trainable for p in m.parameters()], 1.0)
                    self.side_optimizer.step()
                for key, value in {"clip_frac": float(stats["clip_frac"]), "approx_kl": float(stats["approx_kl"]),
                                   "entropy": masked_mean(entropy, mb_mask).item(), "policy_loss": loss.item(),
                                   **value_stats}.items():
                    collected.setdefault(key, []).append(value)
        return {"learning_rate": self.optimizer.param_groups[0]["lr"],  # the rate the policy's steps used
                **{k: sum(v) / len(v) for k, v in collected.items()}}
