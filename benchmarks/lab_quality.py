"""DVPO vs PPO vs SFT on the lab over several seeds: `dvpo demo` once per seed, then one summary.

    python benchmarks/lab_quality.py --seeds 0 1 2 --runs runs/quality --output docs/results/lab_quality.json

Writes the JSON summary, a markdown table (mean ± std over seeds of the held-out judge score)
and a PNG with every seed's held-out learning curve for DVPO and PPO.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODELS = ("untrained", "sft", "dvpo", "ppo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="runs/quality", help="one demo folder per seed goes here")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    reports = {}
    for seed in args.seeds:
        out = Path(args.runs) / f"seed{seed}"
        command = [sys.executable, "-m", "dvpo", "demo", "--seed", str(seed), "--out", str(out)]
        subprocess.run(command + (["--quick"] if args.quick else []), check=True)
        reports[seed] = json.loads((out / "report.json").read_text())
    summary = {}
    for model in MODELS:
        means = [r["scores"][model]["mean"] for r in reports.values()]
        summary[model] = {"mean": statistics.fmean(means), "std": statistics.stdev(means) if len(means) > 1 else 0.0,
                          "per_seed": means}
        wins = [r["scores"][model]["win_rate"] for r in reports.values() if "win_rate" in r["scores"][model]]
        if wins:
            summary[model]["win_rate_vs_sft"] = statistics.fmean(wins)
    best = [max(r["behaviour_policies"].values()) for r in reports.values()]
    summary["best_behaviour_policy"] = {"mean": statistics.fmean(best), "per_seed": best}
    summary["gvm_accuracy_mean"] = statistics.fmean(r["gvm_accuracy"]["accuracy"]["mean"] for r in reports.values())
    summary["rm_accuracy"] = statistics.fmean(r["rm_accuracy"] for r in reports.values())
    summary["dvpo_over_ppo"] = summary["dvpo"]["mean"] / summary["ppo"]["mean"]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"seeds": args.seeds, "quick": args.quick, "summary": summary,
                                  "reports": reports}, indent=2))
    lines = [f"Lab, seeds {args.seeds}{' (quick)' if args.quick else ''}: held-out judge score, "
             "mean ± std over seeds (each seed: 4 samples per held-out prompt at temperature 1)", "",
             "| model | judge score | per seed | win rate vs SFT |", "| --- | --- | --- | --- |"]
    for model in MODELS:
        s = summary[model]
        win = f"{100 * s['win_rate_vs_sft']:.0f}%" if "win_rate_vs_sft" in s else "—"
        lines.append(f"| {model} | {s['mean']:.2f} ± {s['std']:.2f} | "
                     f"{', '.join(f'{m:.2f}' for m in s['per_seed'])} | {win} |")
    lines.append(f"| best behaviour policy | {summary['best_behaviour_policy']['mean']:.2f} | | |")
    lines += ["", f"DVPO / PPO final score: {summary['dvpo_over_ppo']:.3f}; "
              f"GVM accuracy (mean aggregation) {100 * summary['gvm_accuracy_mean']:.1f}%; "
              f"RM accuracy {100 * summary['rm_accuracy']:.1f}%"]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot_curves(args, output.with_suffix(".png"))
    print("\n".join(lines))


def plot_curves(args, out_png: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for algo, color in (("dvpo", "tab:blue"), ("ppo", "tab:orange")):
        for i, seed in enumerate(args.seeds):
            path = Path(args.runs) / f"seed{seed}" / algo / "metrics.jsonl"
            records = [json.loads(line) for line in path.read_text().splitlines()]
            points = [(r["step"], r["eval_score"]) for r in records if "eval_score" in r]
            ax.plot(*zip(*points), color=color, alpha=0.8, marker="o", label=algo.upper() if i == 0 else None)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out lab judge score")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
