"""`dvpo compare`: the paper's comparison in one command, on the lab by default.

SFT, the GVM and the reward model are trained once; then, for each seed, DVPO, PPO, ReMax, RLOO and
GRPO (same prompts, same samples per step, same RL settings) and DPO (offline, on the rated
split's best-vs-worst pairs); every model is judged on held-out prompts against that seed's SFT
samples, and one report is written (see `dvpo.eval.compare_report`).

Each training run is a `dvpo <stage> --config FILE` subprocess (`dvpo.stage_runner`), so its peak
memory is its own; independent runs (the GVM and the reward model, then every method and seed)
share the cores, `--jobs` at a time. Finished runs are reused, so re-running an interrupted
comparison resumes it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from dvpo.options import apply_overrides, save_config

from dvpo.errors import ConfigError
from dvpo.stage_options import COMPARE_METHODS, CompareConfig
from dvpo.data.formats import load_rows
from dvpo.eval.compare_report import write_report
from dvpo.eval.gvm_accuracy import evaluate_gvm
from dvpo.lab.tasks import is_lab_prompt
from dvpo.pipeline import (FULL, QUICK, LabBudget, Timer, dpo_config, gvm_config, judge_model, lab_budget, prepare_lab,
                           rl_config, rm_config, sft_config)
from dvpo.recipes import recipe_for
from dvpo.stage_runner import StageRunner, thread_budget
from dvpo.trainers.sources import SOURCE_NAMES
from dvpo.trainers.sources.dvpo import DEFAULT_LAMBDA, dvpo_lambda

logger = logging.getLogger(__name__)

DATA_FILES = ("sft.jsonl", "rated.jsonl", "prompts.jsonl")  # and the held-out pair of --judge-on
OVERRIDABLE = ("sft", "gvm", "rm", "rl", "dpo")
NEEDS_RM = tuple(name for name in SOURCE_NAMES if name != "dvpo")  # every RL algorithm but DVPO


LAB_SETTINGS = (
    "SFT, the GVM and the reward model are trained once (seed {seed}); each seed then trains every method from "
    "the same SFT model. DVPO, PPO, ReMax, GRPO and RLOO share every RL setting: {steps} steps of {batch} samples from "
    "the same RL prompts (GRPO and RLOO: groups of {group}), minibatch {mini}, {epochs} PPO epochs, lr {lr:g}, KL "
    "{kl_coef:g} adaptive towards {kl_target}, up to {new_tokens} new tokens; DVPO's advantage: {dvpo_advantage} "
    "(GVM value normalisation: {dvpo_normalization}), the reward model's scores standardised by its stored "
    "statistics. ReMax also decodes one greedy response per prompt for its baseline. DPO trains offline on the "
    "rated split's best-vs-worst pairs ({dpo_epochs:g} epoch(s), β {dpo_beta:g}, lr {dpo_lr:g}). Stage settings: "
    "configs/recipes/{recipe}/*.yaml.")
LAB_JUDGE = ("Judge: the lab's ground truth on held-out prompts, 4 samples each at temperature 1; win rate per "
             "prompt against the same seed's SFT samples (ties count half).")
LLM_JUDGE = ("Judge: {model} at {endpoint} with the paper's Appendix D prompt (0-5), one sample per held-out "
             "prompt; win rate from pairwise verdicts in randomised order against the same seed's SFT sample "
             "(ties count half).")


def method_config(method: str, sft: Path, gvm: Path, rm: Path, data: Path, out: Path, budget: LabBudget,
                  seed: int, second_scorers: bool = False):
    """Each method's run; the online ones share every RL setting and differ in their advantage source. With
    `second_scorers`, each is watched by the other scorer when the comparison trained it (`--eval-scorer`: the
    reward model for DVPO, the GVM for the others), so over-optimisation shows against a second scorer as well as
    against the judge (off by default: the extra frozen model would count in every run's time and memory)."""
    if method == "dpo":
        return "dpo", dpo_config(sft, data, out, budget, seed)
    own, other = (("gvm", gvm), rm) if method == "dvpo" else (("reward_model", rm), gvm)
    source = {own[0]: str(own[1]), **({"eval_scorer": str(other)} if other and second_scorers else {})}
    return "rl", rl_config(method, sft, data, out, budget, seed, **source)


def check_options(cfg: CompareConfig) -> None:
    unknown = [m for m in cfg.methods if m not in COMPARE_METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(COMPARE_METHODS)})")
    if cfg.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    stray = [k for k in cfg.overrides if k not in OVERRIDABLE]
    if stray:
        raise ConfigError(f"--overrides: unknown stage {', '.join(map(str, stray))} "
                          f"(stages: {', '.join(OVERRIDABLE)})")


def inputs(cfg: CompareConfig, root: Path, budget: LabBudget, timer: Timer) -> tuple[Path, Path]:
    """(data folder, base model): the lab's, generated under `root`, unless given."""
    if cfg.data is None:
        return prepare_lab(root, budget, cfg.seed, timer, task=cfg.task, base_model=cfg.model)
    data = Path(cfg.data)
    missing = [f for f in (*DATA_FILES, budget.held_out_prompts, budget.held_out_rated) if not (data / f).is_file()]
    if missing:
        raise FileNotFoundError(f"--data {data}: missing {', '.join(missing)} (write them with `dvpo lab make-data` "
                                "or `dvpo data ultrafeedback`)")
    if not cfg.model:
        raise ConfigError("--data given without --model: name the base model to fine-tune")
    return data, Path(cfg.model)


def lab_settings(rl, dpo, recipe_name: str, seed: int) -> str:
    """The report's sentence of shared settings: the RL settings every method ran with, DVPO's advantage with its
    GAE lambda where its form has one, and the recipe they come from."""
    advantage = rl.dvpo_advantage + (f" λ {dvpo_lambda(rl):g}" if rl.dvpo_advantage in DEFAULT_LAMBDA else "")
    return LAB_SETTINGS.format(
        seed=seed, steps=rl.steps, batch=rl.rollout_batch_size, group=rl.group_size, mini=rl.mini_batch_size,
        epochs=rl.ppo_epochs, lr=rl.learning_rate, kl_coef=rl.kl_coef, kl_target=rl.kl_target,
        new_tokens=rl.max_new_tokens, dvpo_advantage=advantage, dvpo_normalization=rl.dvpo_normalization,
        dpo_epochs=dpo.epochs, dpo_beta=dpo.beta, dpo_lr=dpo.learning_rate, recipe=recipe_name)


def llm_judge(endpoint: str, judge_model_name: str, max_new_tokens: int):
    """Judge one sample per held-out prompt with an LLM (the paper's Appendix D): its 0-5 score, and with a
    baseline the pairwise win rate in randomised order (ties count half)."""
    from dvpo.stage_options import GenerateConfig, LlmJudgeConfig
    from dvpo.eval.llm_judge import run_llm_judge
    from dvpo.rollout.generate import run_generate

    def judge(model: Path, prompts: Path, out: Path, baseline: Path | None, seed: int, timer: Timer) -> dict:
        if not out.exists():
            timer(f"generate:{out.parent.name}/{out.stem}", run_generate, GenerateConfig(
                model=str(model), prompts=str(prompts), out=str(out), max_new_tokens=max_new_tokens, seed=seed))
        ask = dict(generations=str(out), endpoint=endpoint, model=judge_model_name, seed=seed)
        absolute = run_llm_judge(LlmJudgeConfig(out=str(out.with_suffix(".judge.json")), **ask))
        if not absolute["scored"]:
            raise ConfigError(f"the judge gave no parsable score for {out} (see {absolute['results']}); check "
                              "--judge-model, then re-run: finished runs and paid replies are reused")
        result = {"n": absolute["scored"], "mean": absolute["mean"], "std": absolute["std"], "sem": absolute["sem"]}
        if baseline is not None and baseline != out:
            pairwise = run_llm_judge(LlmJudgeConfig(out=str(out.with_suffix(".pairwise.json")),
                                                    baseline=str(baseline), **ask))
            if pairwise["judged"]:
                result["win_rate"] = pairwise["win_rate"] + 0.5 * pairwise["tie_rate"]
        return result

    return judge


def pick_judge(cfg: CompareConfig, held_out: Path, max_new_tokens: int, budget: LabBudget):
    """(judge, its sentence in the report): the lab's ground-truth judge for lab prompts, sampling by the run's
    recipe; any other data needs an LLM judge endpoint."""
    prompts = [row["prompt"] for row in load_rows(held_out, "prompts")]
    if all(isinstance(p, str) and is_lab_prompt(p) for p in prompts):
        return functools.partial(judge_model, recipe_name=budget.recipe, changes=budget.changes("generate")), LAB_JUDGE
    if not (cfg.judge_endpoint and cfg.judge_model):
        raise ConfigError(f"{held_out} holds prompts that are not the lab's, so the lab's "
                          "judge cannot score them: pass --judge-endpoint and --judge-model (an LLM judge)")
    return (llm_judge(cfg.judge_endpoint, cfg.judge_model, max_new_tokens),
            LLM_JUDGE.format(model=cfg.judge_model, endpoint=cfg.judge_endpoint))


def run_compare(cfg: CompareConfig) -> dict:
    check_options(cfg)
    budget = dataclasses.replace(lab_budget(recipe_for(cfg.model, cfg.recipe), cfg.quick, FULL, QUICK),
                                 held_out=cfg.judge_on)
    root = Path(cfg.out)
    if cfg.overwrite and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "dvpo_config.yaml")
    timer = Timer()
    data, base = inputs(cfg, root, budget, timer)
    rl_settings = apply_overrides(rl_config("dvpo", base, data, root, budget, cfg.seed),
                                  cfg.overrides.get("rl", {}), "overrides: rl")
    judge, judge_sentence = pick_judge(cfg, data / budget.held_out_prompts, rl_settings.max_new_tokens, budget)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    need_gvm, need_rm = "dvpo" in cfg.methods, any(m in NEEDS_RM for m in cfg.methods)
    run = StageRunner(root, cfg.overrides, total=1 + need_gvm + need_rm + len(seeds) * len(cfg.methods),
                      jobs=cfg.jobs, desc="compare")

    sft = run("sft", "sft", sft_config(base, data, root / "sft", budget, cfg.seed))
    gvm, rm = (root / "gvm" if need_gvm else None), (root / "rm" if need_rm else None)
    scorers = []
    if gvm:
        scorers.append(("gvm", "gvm", gvm_config(sft, data, gvm, budget, cfg.seed)))
    if rm:
        scorers.append(("rm", "rm", rm_config(sft, data, rm, budget, cfg.seed)))
    run.together(scorers)
    grid = [(seed, method) for seed in seeds for method in cfg.methods]
    outs = run.together([(f"seed{seed}-{method}",
                          *method_config(method, sft, gvm, rm, data, root / f"seed{seed}" / method, budget, seed,
                                         cfg.second_scorers))
                         for seed, method in grid])
    runs: dict[str, dict[int, Path]] = {m: {} for m in cfg.methods}
    for (seed, method), out in zip(grid, outs):
        runs[method][seed] = out
    run.close()

    prompts = data / budget.held_out_prompts
    scores: dict[str, dict[int, dict]] = {"sft": {}, **{m: {} for m in cfg.methods}}
    for seed in tqdm(seeds, desc="judge", unit="seed"):
        # Generations live in their model's run folder, so a retrained run is never judged by old samples.
        baseline = sft / "generations" / f"seed{seed}.jsonl"
        scores["sft"][seed] = judge(sft, prompts, baseline, None, seed, timer)
        for method in cfg.methods:
            scores[method][seed] = judge(runs[method][seed], prompts, runs[method][seed] / "generations.jsonl",
                                         baseline, seed, timer)
    gvm_accuracy = evaluate_gvm(str(gvm), str(data / budget.held_out_rated), seed=cfg.seed) if gvm else None
    rm_accuracy = json.loads((rm / "dvpo_complete.json").read_text()).get("eval_accuracy") if rm else None
    dpo = dpo_config(base, data, root, budget, cfg.seed)
    settings = lab_settings(rl_settings, dpo, budget.recipe, cfg.seed) + " " + judge_sentence
    settings += (f" Independent runs trained {run.jobs} at a time with {max(1, thread_budget() // run.jobs)} "
                 "torch thread(s) each, so times per step are of that sharing.")
    if cfg.overrides:
        settings += f" Overrides of these settings: {json.dumps(cfg.overrides)}."
    if cfg.judge_on == "validation":
        settings += (f" Judged, monitored and scorer accuracy measured on the validation sets "
                     f"({budget.held_out_prompts}, {budget.held_out_rated}), not on test: numbers for choosing "
                     "settings, not results.")
    return write_report(root, cfg, budget, seeds, scores, runs, gvm_accuracy, rm_accuracy,
                        {**run.seconds, **timer.seconds}, settings)
