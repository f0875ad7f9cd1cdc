"""GVM ablation on the lab: tau on/off, td-lambda 0/1, value and score normalisation, same data and seed.

Uses the data and SFT model of a finished `dvpo demo` folder, trains one GVM per variant with the
same budget, and writes the Appendix C accuracy of each as markdown and JSON.

    python benchmarks/gvm_ablation.py --demo runs/demo --epochs 1 --output docs/results/gvm_ablation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dvpo.configs import GvmConfig
from dvpo.eval.gvm_accuracy import AGGREGATIONS, evaluate_gvm
from dvpo.trainers.gvm import run_gvm
from dvpo.trainers.common import setup_logging

VARIANTS = {  # name: (tau, td_lambda, value_normalization, score_normalization)
    "paper: tau, TD(0), batch-norm": ("policy", 0.0, "batch", "zscore"),
    "tau, TD(0), no norm": ("policy", 0.0, "none", "zscore"),
    "tau, MC (lambda 1), batch-norm": ("policy", 1.0, "batch", "zscore"),
    "tau, MC (lambda 1), no norm (demo)": ("policy", 1.0, "none", "zscore"),
    "tau, MC (lambda 1), no norm, prompt-relative scores": ("policy", 1.0, "none", "prompt"),
    "no tau, MC (lambda 1), no norm": ("none", 1.0, "none", "zscore"),
    "no tau, TD(0), batch-norm": ("none", 0.0, "batch", "zscore"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", required=True, help="a finished `dvpo demo` folder (its data/ and sft/)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    setup_logging()
    demo, work = Path(args.demo), Path(args.output).with_suffix("")
    results = {}
    for index, (name, (tau, lam, norm, scores)) in enumerate(VARIANTS.items()):
        started = time.perf_counter()
        out = work / f"variant{index}"
        run_gvm(GvmConfig(model=str(demo / "sft"), data=str(demo / "data" / "rated.jsonl"), out=str(out),
                          tau=tau, td_lambda=lam, value_normalization=norm, score_normalization=scores,
                          epochs=args.epochs,
                          learning_rate=args.learning_rate, warmup_steps=20, batch_size=32, max_length=96,
                          logging_steps=50, save_steps=100000, seed=args.seed, overwrite=True))
        result = evaluate_gvm(str(out), str(demo / "data" / "rated_test.jsonl"), seed=args.seed)
        result["train_seconds"] = round(time.perf_counter() - started, 1)
        results[name] = result
    output = Path(args.output)
    output.write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))
    lines = [f"GVM ablation on the lab (`{args.demo}`, seed {args.seed}, {args.epochs} epoch(s), "
             f"lr {args.learning_rate}): pairwise accuracy on held-out rated data", "",
             "| variant | pairs | " + " | ".join(AGGREGATIONS) + " | train s |",
             "| --- " * (len(AGGREGATIONS) + 3) + "|"]
    for name, r in results.items():
        cells = " | ".join(f"{100 * r['accuracy'][a]:.1f}%" for a in AGGREGATIONS)
        lines.append(f"| {name} | {r['pairs']} | {cells} | {r['train_seconds']} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
