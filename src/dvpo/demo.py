"""`dvpo demo`: the lab end to end on its embedded defaults, then a short report.

Each stage writes into its own folder under --out and is skipped when that folder already
holds a finished run, so an interrupted demo picks up where it stopped. Scores are of
samples at temperature 1: that is the policy that RL optimises, and greedy decoding would
hide what SFT has (and has not) learned.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dvpo.configs import DemoConfig, GenerateConfig, GvmConfig, SftConfig
from dvpo.eval.gvm_accuracy import evaluate_gvm, format_table
from dvpo.eval.lab_judge import judge_file, policy_scores
from dvpo.lab.make_data import make_lab_data
from dvpo.models.init import init_model
from dvpo.rollout.generate import run_generate
from dvpo.trainers.gvm import run_gvm
from dvpo.trainers.run_dir import is_complete
from dvpo.trainers.sft import run_sft

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoBudget:
    """Sizes and steps of one demo flavour; the paper's 30/50/20 split of training prompts."""

    n_sft: int
    n_rated: int
    n_rl: int
    n_test: int
    sft_epochs: float
    gvm_epochs: float
    size: str = "small"


FULL = DemoBudget(n_sft=3000, n_rated=5000, n_rl=2000, n_test=200, sft_epochs=10, gvm_epochs=2)
QUICK = DemoBudget(n_sft=1500, n_rated=1500, n_rl=500, n_test=100, sft_epochs=8, gvm_epochs=1)


class Timer:
    """Wall-clock seconds per demo stage, for the report."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 1)
        logger.info("demo stage %s took %.1f s", name, self.seconds[name])
        return result


def _judge_samples(model: Path, prompts: Path, out: Path, seed: int, timer: Timer, name: str) -> dict:
    if not out.exists():
        timer(f"generate:{name}", run_generate, GenerateConfig(model=str(model), prompts=str(prompts), out=str(out),
                                                                temperature=1.0, max_new_tokens=24, seed=seed))
    return judge_file(out)


def run_demo(cfg: DemoConfig) -> dict:
    budget = QUICK if cfg.quick else FULL
    root = Path(cfg.out)
    if cfg.overwrite and root.exists():
        shutil.rmtree(root)
    timer = Timer()
    data_dir = root / "data"
    if not (data_dir / "manifest.json").exists():
        timer("make-data", make_lab_data, data_dir, seed=cfg.seed, n_sft=budget.n_sft, n_rated=budget.n_rated,
              n_rl=budget.n_rl, n_test=budget.n_test, n_rated_test=budget.n_test)
    init_dir = root / "init"
    if not (init_dir / "dvpo_init.json").exists():
        timer("init", init_model, [str(data_dir / f) for f in ("sft.jsonl", "rated.jsonl", "prompts.jsonl")],
              budget.size, str(init_dir), seed=cfg.seed)
    sft_dir = root / "sft"
    if not is_complete(sft_dir):
        timer("sft", run_sft, SftConfig(model=str(init_dir), data=str(data_dir / "sft.jsonl"), out=str(sft_dir),
                                        epochs=budget.sft_epochs, learning_rate=2e-3, warmup_steps=20, batch_size=32,
                                        max_length=64, weight_decay=0.01, logging_steps=20, save_steps=200,
                                        seed=cfg.seed))
    gvm_dir = root / "gvm"
    if not is_complete(gvm_dir):
        timer("gvm", run_gvm, GvmConfig(model=str(sft_dir), data=str(data_dir / "rated.jsonl"), out=str(gvm_dir),
                                        epochs=budget.gvm_epochs, learning_rate=1e-3, warmup_steps=20,
                                        batch_size=32, max_length=96, td_lambda=1.0, value_normalization="none",
                                        logging_steps=50, save_steps=500, seed=cfg.seed))
    gvm_accuracy = timer("eval-gvm", evaluate_gvm, str(gvm_dir), str(data_dir / "rated_test.jsonl"), seed=cfg.seed)
    test_prompts = data_dir / "test_prompts.jsonl"
    scores = {
        "untrained": _judge_samples(init_dir, test_prompts, root / "generations" / "untrained.jsonl", cfg.seed,
                                    timer, "untrained"),
        "sft": _judge_samples(sft_dir, test_prompts, root / "generations" / "sft.jsonl", cfg.seed, timer, "sft"),
    }
    prompts = [json.loads(line)["prompt"] for line in test_prompts.read_text().splitlines()]
    behaviour = policy_scores(prompts, seed=cfg.seed)
    report = {"budget": vars(budget), "scores": scores, "behaviour_policies": behaviour,
              "gvm_accuracy": gvm_accuracy, "seconds": timer.seconds}
    (root / "report.json").write_text(json.dumps(report, indent=2))
    text = format_demo_report(scores, behaviour, timer.seconds) + "\n" + format_table(gvm_accuracy)
    (root / "report.md").write_text(text)
    print(text)
    return report


def format_demo_report(scores: dict, behaviour: dict, seconds: dict) -> str:
    best = max(behaviour, key=behaviour.get)
    lines = ["# dvpo demo: lab ground-truth judge on held-out prompts (higher is better; max 10)", "",
             "| model | judge score (mean ± sem) |", "| --- | --- |"]
    lines += [f"| {name} | {s['mean']:.2f} ± {s['sem']:.2f} |" for name, s in scores.items()]
    lines.append(f"| best behaviour policy ({best}) | {behaviour[best]:.2f} |")
    lines += ["", "Behaviour policies: " + ", ".join(f"{k} {v:.2f}" for k, v in behaviour.items()), "",
              "Stage seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items())]
    return "\n".join(lines) + "\n"
