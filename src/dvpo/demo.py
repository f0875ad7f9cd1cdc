"""`dvpo demo`: the lab end to end on its embedded defaults, then a short report.

Stages: lab data -> tokenizer + fresh Llama -> SFT -> GVM (and its accuracy table) -> reward
model -> DVPO and PPO from the same SFT model with the same RL settings -> judge every model on
held-out prompts. Each stage writes its own folder under --out and is skipped when that folder
holds a finished run, so an interrupted demo picks up where it stopped. Training runs are
subprocesses (`dvpo.stage_runner`, logs in --out/logs): the GVM and the reward model train at the
same time, then DVPO and PPO, sharing the cores (`--jobs`). The GVM and the reward model train for
2/3 of their recipes' steps (`DEMO`), so that install and demo fit 10 minutes on 2 cores. Scores
are of samples at temperature 1: that is the policy RL optimises (greedy decoding would hide what
SFT has and has not learned). The lab settings (configs/recipes/small/*.yaml) suit a
~2M-parameter model trained from scratch; the CLI's own defaults are the paper's, for real models.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from dvpo.stage_options import DemoConfig
from dvpo.eval.gvm_accuracy import evaluate_gvm, format_table
from dvpo.eval.lab_judge import policy_scores
from dvpo.eval.plots import plot_runs
from dvpo.pipeline import (DEMO, DEMO_QUICK, EVAL_SAMPLES, Timer, gvm_config, judge_model, lab_budget, prepare_lab,
                           rl_config, rm_config, sft_config)
from dvpo.recipes import recipe_for
from dvpo.stage_runner import StageRunner

logger = logging.getLogger(__name__)


def run_demo(cfg: DemoConfig) -> dict:
    budget = lab_budget(recipe_for(cfg.model, cfg.recipe), cfg.quick, DEMO, DEMO_QUICK)
    root = Path(cfg.out)
    if cfg.overwrite and root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    timer = Timer()
    data, init_dir = prepare_lab(root, budget, cfg.seed, timer, task=cfg.task, base_model=cfg.model)
    sft_dir, gvm_dir, rm_dir = root / "sft", root / "gvm", root / "rm"
    run = StageRunner(root, {}, total=5, jobs=cfg.jobs, desc="demo")
    run("sft", "sft", sft_config(init_dir, data, sft_dir, budget, cfg.seed))
    run.together([("gvm", "gvm", gvm_config(sft_dir, data, gvm_dir, budget, cfg.seed)),
                  ("rm", "rm", rm_config(sft_dir, data, rm_dir, budget, cfg.seed))])
    run.together([("dvpo", "rl", rl_config("dvpo", sft_dir, data, root / "dvpo", budget, cfg.seed, gvm=str(gvm_dir))),
                  ("ppo", "rl", rl_config("ppo", sft_dir, data, root / "ppo", budget, cfg.seed,
                                          reward_model=str(rm_dir)))])
    run.close()
    gvm_accuracy = timer("eval-gvm", evaluate_gvm, str(gvm_dir), str(data / "rated_test.jsonl"), seed=cfg.seed)
    rm_accuracy = json.loads((rm_dir / "dvpo_complete.json").read_text())["eval_accuracy"]
    models = {"zero-shot" if cfg.model else "untrained": init_dir, "sft": sft_dir, "dvpo": root / "dvpo",
              "ppo": root / "ppo"}
    scores = {name: judge_model(model, data / "test_prompts.jsonl", root / "generations" / f"{name}.jsonl",
                                root / "generations" / "sft.jsonl", cfg.seed, timer, budget.recipe,
                                budget.changes("generate"))
              for name, model in models.items()}
    prompts = [json.loads(line)["prompt"] for line in (data / "test_prompts.jsonl").read_text().splitlines()]
    behaviour = policy_scores(prompts, seed=cfg.seed, samples_per_prompt=EVAL_SAMPLES, task=cfg.task)
    plot_runs({algo: root / algo / "metrics.jsonl" for algo in ("dvpo", "ppo")}, "eval_score",
              root / "learning_curves.png", title="held-out lab judge score during RL")
    report = {"task": cfg.task, "budget": asdict(budget), "scores": scores, "behaviour_policies": behaviour,
              "gvm_accuracy": gvm_accuracy, "rm_accuracy": rm_accuracy,
              "rl_last_step": {algo: last_step(root / algo / "metrics.jsonl") for algo in ("dvpo", "ppo")},
              "seconds": {**run.seconds, **timer.seconds}, "wall_seconds": round(time.perf_counter() - started, 1)}
    (root / "report.json").write_text(json.dumps(report, indent=2))
    text = format_demo_report(report)
    (root / "report.md").write_text(text)
    print(text)
    return report


def last_step(metrics: Path) -> dict:
    """What shows a policy gaming its signal, at the run's last step: response length (and its ratio to the
    starting policy's), KL to the reference and its coefficient."""
    last = json.loads(metrics.read_text().splitlines()[-1])
    return {key: last[key] for key in ("step", "response_length", "length_ratio", "kl", "kl_coef") if key in last}


def format_demo_report(report: dict) -> str:
    behaviour, scores = report["behaviour_policies"], report["scores"]
    best = max(behaviour, key=behaviour.get)
    lines = [f"# dvpo demo ({report.get('task', 'digits')} lab): ground-truth judge on held-out prompts "
             "(higher is better; max 10)", "",
             "| model | judge score (mean ± sem) | win rate vs SFT |", "| --- | --- | --- |"]
    for name, s in scores.items():
        win = f"{100 * s['win_rate']:.0f}%" if "win_rate" in s else "—"
        lines.append(f"| {name} | {s['mean']:.2f} ± {s['sem']:.2f} | {win} |")
    lines.append(f"| best behaviour policy ({best}) | {behaviour[best]:.2f} | |")
    lines += ["", "Behaviour policies: " + ", ".join(f"{k} {v:.2f}" for k, v in behaviour.items()),
              *(f"{algo.upper()} at step {r['step']}: response length {r['response_length']:.1f} tokens "
                f"({r.get('length_ratio', 1.0):.2f}x the starting policy's), KL {r['kl']:.2f} nats, KL coefficient "
                f"{r['kl_coef']:.3f}" for algo, r in report.get("rl_last_step", {}).items()),
              f"Reward model held-out pairwise accuracy: {100 * report['rm_accuracy']:.1f}%", "",
              format_table(report["gvm_accuracy"]),
              "Stage seconds: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items())
              + (f"; {report['wall_seconds']} s in all" if "wall_seconds" in report else ""),
              "Learning curves: learning_curves.png"]
    return "\n".join(lines) + "\n"
