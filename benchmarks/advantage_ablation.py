"""DVPO's advantage and value normalisation, chosen on validation prompts: variants x RL seeds on one lab comparison.

It starts from a finished `dvpo compare --judge-on validation --methods dvpo ppo` folder (its data, SFT model, GVM,
reward model, and the recipe's DVPO and PPO runs per seed), trains each variant once per seed from the same SFT
model and scorer with every other setting of the comparison's rl.yaml recipe (small, or smollm2 for
`--model smollm2-135m-instruct`), judged as the comparison judges (PPO's variants get the same care as
DVPO's: its λ, its critic's start and learning rate), judges each run on the lab's *validation* prompts (never
test) and writes one table: judge mean +- std over seeds, win rate against SFT, and what the run did to its own
scorer (eval_proxy_score, the GVM's value of the policy's samples on those prompts, first to last evaluation), KL
and length at the last step. The recipes' own variants are read from the comparison's runs, not trained again.

    dvpo compare --task digits --methods dvpo ppo --judge-on validation --seeds 3 --out runs/abl/digits
    python benchmarks/advantage_ablation.py --root runs/abl/digits --output docs/results/advantage_ablation/digits.json

A comparison of only DVPO (`--methods dvpo`) takes DVPO's variants only: `--variants "dvpo gae-0.95-reliability"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import yaml

from dvpo.pipeline import FULL, QUICK, Timer, judge_model, lab_budget, rl_config
from dvpo.recipes import recipe_for
from dvpo.stage_runner import StageRunner
from dvpo.trainers.common import setup_logging

RECIPE_RUNS = {"dvpo gae-1-reliability": "dvpo", "ppo gae-0.95": "ppo"}  # the comparison's own runs
VARIANTS = {  # name: (algorithm, changes to the recipe)
    "dvpo gae-1-reliability": ("dvpo", {}),  # the recipe: baseline-only, advantage = final value - V(s_t)
    "dvpo gae-0.95-reliability": ("dvpo", {"dvpo_gae_lambda": 0.95}),  # the recipe until these tables chose 1
    "dvpo gae-0.95-stored": ("dvpo", {"dvpo_gae_lambda": 0.95, "dvpo_normalization": "stored"}),
    "dvpo gae-1-stored": ("dvpo", {"dvpo_normalization": "stored"}),
    "dvpo gae-0.95-none": ("dvpo", {"dvpo_gae_lambda": 0.95, "dvpo_normalization": "none"}),
    "dvpo value-reliability": ("dvpo", {"dvpo_advantage": "value"}),  # the paper's normalised token value
    "dvpo gae-1-mean-reliability": ("dvpo", {"dvpo_reward": "mean"}),  # the mean of the GVM's values as the reward
    "dvpo sequence-reliability": ("dvpo", {"dvpo_advantage": "sequence"}),  # final value - V(s_1) on every token
    "dvpo blend-reliability": ("dvpo", {"dvpo_advantage": "blend"}),  # baseline V(s_1) + w (V(s_t) - V(s_1))
    "dvpo authors": ("dvpo", {"dvpo_advantage": "authors"}),  # the authors' code: KL-only reward, zero terminal value
    "ppo gae-0.95": ("ppo", {}),  # the recipe: critic from the reward model
    "ppo gae-1": ("ppo", {"gae_lambda": 1.0}),
    "ppo critic-from-policy": ("ppo", {"critic_init": "policy"}),  # the SFT model with a zero value head
    "ppo critic-lr-3x": ("ppo", {"critic_learning_rate": 3.0e-4}),
    "ppo critic-frozen": ("ppo", {"vf_coef": 0.0}),  # the critic stays the reward model, fixed as DVPO's GVM is
}


def run_folder(name: str) -> str:
    """runs/.../ablation/<this>: DVPO's variants by their own name, PPO's prefixed."""
    algo, variant = name.split(" ", 1)
    return variant if algo == "dvpo" else f"{algo}-{variant}"


def final_metrics(run: Path) -> dict:
    """KL and length ratio at the last step, and the GVM's value of the policy's held-out samples, first to last."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r["eval_proxy_score"] for r in rows if "eval_proxy_score" in r]
    return {"kl": rows[-1]["kl"], "length_ratio": rows[-1]["length_ratio"],
            "proxy_first": evals[0] if evals else None, "proxy_last": evals[-1] if evals else None}


def judged(run: Path, prompts: Path, baseline: Path, seed: int, timer: Timer, recipe_name: str) -> dict:
    result = judge_model(run, prompts, run / "generations.jsonl", baseline, seed, timer, recipe_name)
    return {"judge": result["mean"], "win_rate": result.get("win_rate"), **final_metrics(run)}


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    if len(values) < 2:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(results: dict, sft: dict, seeds: list[int], root: Path) -> list[str]:
    lines = [f"DVPO and PPO variants on `{root}` (judged on the lab's validation prompts, 4 samples each; mean ± std over "
             f"RL seeds {', '.join(map(str, seeds))}; SFT {spread([sft[s] for s in seeds])}). Proxy: the GVM's "
             "value of the policy's samples on those prompts, first → last evaluation (for PPO its reward model's "
             "score). Command in benchmarks/advantage_ablation.py.", "",
             "| variant | judge | per seed | − SFT | win vs SFT | proxy first → last | KL (last step) | length ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, cells in results.items():
        cells = [cells[str(s)] for s in seeds if str(s) in cells]
        if not cells:
            continue
        judges = [c["judge"] for c in cells]
        gain = statistics.fmean(judges) - statistics.fmean(sft[s] for s in seeds)
        proxy = ([c["proxy_first"] for c in cells if c["proxy_first"] is not None],
                 [c["proxy_last"] for c in cells if c["proxy_last"] is not None])
        proxy_text = (f"{statistics.fmean(proxy[0]):.2f} → {statistics.fmean(proxy[1]):.2f}" if proxy[0] else "—")
        lines.append(f"| {name} | {spread(judges)} | {', '.join(f'{j:.2f}' for j in judges)} | {gain:+.2f} | "
                     f"{100 * statistics.fmean(c['win_rate'] for c in cells):.0f}% | {proxy_text} | "
                     f"{statistics.fmean(c['kl'] for c in cells):.2f} | "
                     f"{statistics.fmean(c['length_ratio'] for c in cells):.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="a finished `dvpo compare --judge-on validation` folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output", required=True, help="JSON of every cell; the table goes beside it as .md")
    args = parser.parse_args()
    setup_logging()
    root = Path(args.root)
    compared = yaml.safe_load((root / "dvpo_config.yaml").read_text())
    given = compared.get("data")  # `dvpo compare --data`
    data, sft, gvm = Path(given) if given else root / "data", root / "sft", root / "gvm"
    recipe_name = recipe_for(compared.get("model"), compared.get("recipe", "auto"))
    budget = dataclasses.replace(lab_budget(recipe_name, compared.get("quick", False), FULL, QUICK),
                                 held_out="validation")
    prompts = data / budget.held_out_prompts
    runs = {}
    for name in args.variants:
        algo, changes = VARIANTS[name]
        if changes.get("critic_init") == "policy":
            changes = {**changes, "critic_init": str(sft)}
        scorer = {"gvm": str(gvm)} if algo == "dvpo" else {"reward_model": str(root / "rm")}
        for seed in args.seeds:
            out = (root / f"seed{seed}" / RECIPE_RUNS[name] if name in RECIPE_RUNS
                   else root / "ablation" / run_folder(name) / f"seed{seed}")
            cfg = dataclasses.replace(rl_config(algo, sft, data, out, budget, seed, **scorer), **changes)
            runs[(name, seed)] = (cfg, out)
    trained = [(f"{run_folder(name)}-seed{seed}", "rl", cfg) for (name, seed), (cfg, out) in runs.items()
               if name not in RECIPE_RUNS]
    runner = StageRunner(root / "ablation", {}, total=len(trained), desc="ablation")
    runner.together(trained)
    runner.close()

    timer = Timer()
    sft_scores, results = {}, {}
    for seed in args.seeds:
        baseline = sft / "generations" / f"seed{seed}.jsonl"
        sft_scores[seed] = judge_model(sft, prompts, baseline, None, seed, timer, budget.recipe)["mean"]
        for name in args.variants:
            results.setdefault(name, {})[str(seed)] = judged(runs[(name, seed)][1], prompts, baseline, seed, timer,
                                                             budget.recipe)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"root": str(root), "seeds": args.seeds, "sft": sft_scores, "variants": VARIANTS,
                                  "results": results, "train_seconds": runner.seconds}, indent=2))
    lines = table(results, sft_scores, args.seeds, root)
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
