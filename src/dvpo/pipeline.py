"""The lab pipeline's stage settings, shared by `dvpo demo` and `dvpo compare`.

One place decides how each stage is configured on the lab (data sizes, learning rates, RL
settings), so the demo and the comparison train the same models the same way. The settings
suit a ~2M-parameter model trained from scratch; the CLI's own defaults are the paper's, for
real models.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dvpo.configs import DpoConfig, GenerateConfig, GvmConfig, RlConfig, RmConfig, SftConfig
from dvpo.eval.lab_judge import judge_file
from dvpo.lab.make_data import make_lab_data
from dvpo.models.init import init_model
from dvpo.rollout.generate import run_generate

logger = logging.getLogger(__name__)

EVAL_SAMPLES = 4  # samples per held-out prompt when judging a finished model


@dataclass(frozen=True)
class LabBudget:
    """Sizes and steps of one run flavour; the paper's 30/50/20 split of training prompts."""

    n_sft: int
    n_rated: int
    n_rl: int
    n_test: int
    sft_epochs: float
    gvm_epochs: float
    rm_steps: int
    rl_steps: int
    dpo_epochs: float = 1.0
    size: str = "small"


FULL = LabBudget(n_sft=3000, n_rated=5000, n_rl=2000, n_test=200, sft_epochs=10, gvm_epochs=4, rm_steps=600,
                 rl_steps=150)
QUICK = LabBudget(n_sft=1500, n_rated=1500, n_rl=600, n_test=100, sft_epochs=8, gvm_epochs=2, rm_steps=200,
                  rl_steps=40)


class Timer:
    """Wall-clock seconds per stage, for the report."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 1)
        logger.info("stage %s took %.1f s", name, self.seconds[name])
        return result


def prepare_lab(root: Path, budget: LabBudget, seed: int, timer: Timer) -> tuple[Path, Path]:
    """Lab data and a fresh tokenizer + Llama under `root` (kept when already there); returns (data, init)."""
    data, init_dir = root / "data", root / "init"
    if not (data / "manifest.json").exists():
        timer("make-data", make_lab_data, data, seed=seed, n_sft=budget.n_sft, n_rated=budget.n_rated,
              n_rl=budget.n_rl, n_test=budget.n_test, n_rated_test=budget.n_test)
    if not (init_dir / "dvpo_init.json").exists():
        timer("init", init_model, [str(data / f) for f in ("sft.jsonl", "rated.jsonl", "prompts.jsonl")],
              budget.size, str(init_dir), seed=seed)
    return data, init_dir


def sft_config(model: Path, data: Path, out: Path, budget: LabBudget, seed: int) -> SftConfig:
    return SftConfig(model=str(model), data=str(data / "sft.jsonl"), out=str(out), epochs=budget.sft_epochs,
                     learning_rate=2e-3, warmup_steps=20, batch_size=32, max_length=64, weight_decay=0.01,
                     logging_steps=20, save_steps=200, seed=seed)


def gvm_config(sft: Path, data: Path, out: Path, budget: LabBudget, seed: int) -> GvmConfig:
    """The best lab setting of docs/gvm.md's ablation: Monte-Carlo targets, no value normalisation, no tau
    (on the lab a response shows its policy by itself; tau doubles the input and cost 11 points of
    accuracy), and a gentle lr for four epochs (at 1e-3 training overwrites what SFT learned: 69%
    instead of 81%)."""
    return GvmConfig(model=str(sft), data=str(data / "rated.jsonl"), out=str(out), epochs=budget.gvm_epochs,
                     learning_rate=2e-4, warmup_steps=20, batch_size=32, max_length=96, td_lambda=1.0,
                     tau="none", value_normalization="none", logging_steps=50, save_steps=500, seed=seed)


def rm_config(sft: Path, data: Path, out: Path, budget: LabBudget, seed: int) -> RmConfig:
    """lr 3e-4, as for the GVM: 75% held-out accuracy against 71% at 1e-3."""
    return RmConfig(model=str(sft), data=str(data / "rated.jsonl"), out=str(out),
                    eval_data=str(data / "rated_test.jsonl"), max_steps=budget.rm_steps, batch_size=32,
                    learning_rate=3e-4, warmup_steps=20, max_length=64, logging_steps=50, save_steps=500, seed=seed)


def rl_config(algo: str, sft: Path, data: Path, out: Path, budget: LabBudget, seed: int, **source) -> RlConfig:
    """The same RL settings for every algorithm (same prompts, same samples per step): only the source differs.

    DVPO normalises its values by the GVM's stored statistics, so a token's advantage is its value on the
    GVM's scale (seed 0: judge 7.76, against 7.14 with the rollout batch's statistics; docs/rl.md).
    """
    return RlConfig(algo=algo, policy=str(sft), prompts=str(data / "prompts.jsonl"), out=str(out),
                    steps=budget.rl_steps, rollout_batch_size=32, mini_batch_size=8, ppo_epochs=2,
                    learning_rate=1e-4, max_new_tokens=24, eval_prompts=str(data / "test_prompts.jsonl"),
                    eval_every=max(1, budget.rl_steps // 6), save_every=50, seed=seed, dvpo_normalization="stored",
                    **source)


def dpo_config(sft: Path, data: Path, out: Path, budget: LabBudget, seed: int) -> DpoConfig:
    """Best vs worst rated response per prompt; lr 1e-5 (1e-4 over-optimises, docs/results/rl_variants_seed0.md)."""
    return DpoConfig(model=str(sft), data=str(data / "rated.jsonl"), out=str(out), epochs=budget.dpo_epochs,
                     batch_size=8, learning_rate=1e-5, max_length=64, logging_steps=50, save_steps=500, seed=seed)


def judge_model(model: Path, prompts: Path, out: Path, baseline: Path | None, seed: int, timer: Timer) -> dict:
    """Sample EVAL_SAMPLES responses per held-out prompt at temperature 1 and score them with the lab judge.

    Temperature 1 is the policy RL optimises (greedy decoding would hide what SFT has and has not learned).
    """
    if not out.exists():
        timer(f"generate:{out.parent.name}/{out.stem}", run_generate, GenerateConfig(
            model=str(model), prompts=str(prompts), out=str(out), temperature=1.0, max_new_tokens=24,
            num_samples=EVAL_SAMPLES, seed=seed))
    return judge_file(out, baseline if baseline is not None and baseline != out and baseline.exists() else None)
