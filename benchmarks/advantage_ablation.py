"""DVPO's advantage and value normalisation, chosen on validation prompts: variants x RL seeds on one lab comparison.

It starts from a finished `dvpo compare --judge-on validation --methods dvpo ppo` folder (its data, SFT model, GVM,
and the recipe's DVPO and PPO runs per seed), trains DVPO once per variant and seed from the same SFT model and GVM
with every other setting of configs/recipes/small/rl.yaml, judges each run on the lab's *validation* prompts (never
test) and writes one table: judge mean +- std over seeds, win rate against SFT, and what the run did to its own
scorer (eval_proxy_score, the GVM's value of the policy's samples on those prompts, first to last evaluation), KL
and length at the last step. The recipe's own variant is read from the comparison's runs, not trained again.

    dvpo compare --task digits --methods dvpo ppo --judge-on validation --seeds 3 --out runs/abl/digits
    python benchmarks/advantage_ablation.py --root runs/abl/digits --output docs/results/advantage_ablation/digits.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from dvpo.pipeline import FULL, Timer, judge_model, rl_config
from dvpo.stage_runner import StageRunner
from dvpo.trainers.common import setup_logging

VARIANTS = {
    "gae-0.95-reliability": {},  # the recipe (read from the comparison's own runs)
    "gae-1-reliability": {"gae_lambda": 1.0},  # baseline-only: each token's advantage is the final value - V(s_t)
    "gae-0.95-stored": {"dvpo_normalization": "stored"},
    "gae-1-stored": {"gae_lambda": 1.0, "dvpo_normalization": "stored"},
    "gae-0.95-none": {"dvpo_normalization": "none"},
    "value-reliability": {"dvpo_advantage": "value"},  # the paper's normalised token value
    "authors": {"dvpo_advantage": "authors"},  # the authors' code: KL-only reward, zero terminal value
}


def final_metrics(run: Path) -> dict:
    """KL and length ratio at the last step, and the GVM's value of the policy's held-out samples, first to last."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r["eval_proxy_score"] for r in rows if "eval_proxy_score" in r]
    return {"kl": rows[-1]["kl"], "length_ratio": rows[-1]["length_ratio"],
            "proxy_first": evals[0] if evals else None, "proxy_last": evals[-1] if evals else None}


def judged(run: Path, prompts: Path, baseline: Path, seed: int, timer: Timer) -> dict:
    result = judge_model(run, prompts, run / "generations.jsonl", baseline, seed, timer)
    return {"judge": result["mean"], "win_rate": result.get("win_rate"), **final_metrics(run)}


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    if len(values) < 2:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(results: dict, sft: dict, seeds: list[int], root: Path) -> list[str]:
    lines = [f"DVPO variants on `{root}` (judged on the lab's validation prompts, 4 samples each; mean ± std over "
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
    data, sft, gvm = root / "data", root / "sft", root / "gvm"
    budget = dataclasses.replace(FULL, held_out="validation")
    prompts = data / budget.held_out_prompts
    runs = {}
    for name in args.variants:
        for seed in args.seeds:
            out = root / f"seed{seed}" / "dvpo" if name == "gae-0.95-reliability" else root / "ablation" / name / f"seed{seed}"
            cfg = dataclasses.replace(rl_config("dvpo", sft, data, out, budget, seed, gvm=str(gvm)), **VARIANTS[name])
            runs[(name, seed)] = (cfg, out)
    trained = [(f"{name}-seed{seed}", "rl", cfg) for (name, seed), (cfg, out) in runs.items()
               if name != "gae-0.95-reliability"]
    runner = StageRunner(root / "ablation", {}, total=len(trained), desc="ablation")
    runner.together(trained)
    runner.close()

    timer = Timer()
    sft_scores, results = {}, {}
    for seed in args.seeds:
        baseline = sft / "generations" / f"seed{seed}.jsonl"
        sft_scores[seed] = judge_model(sft, prompts, baseline, None, seed, timer)["mean"]
        results.setdefault("PPO (the recipe)", {})[str(seed)] = judged(root / f"seed{seed}" / "ppo", prompts,
                                                                       baseline, seed, timer)
        for name in args.variants:
            results.setdefault(name, {})[str(seed)] = judged(runs[(name, seed)][1], prompts, baseline, seed, timer)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"root": str(root), "seeds": args.seeds, "sft": sft_scores, "variants": VARIANTS,
                                  "results": results, "train_seconds": runner.seconds}, indent=2))
    lines = table(results, sft_scores, args.seeds, root)
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
