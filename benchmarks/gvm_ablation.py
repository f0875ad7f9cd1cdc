"""GVM ablation on the lab: tau on/off, td-lambda 0/1, value normalisation on/off; same data, seed and budget.

Uses the data and SFT model of a finished `dvpo demo` folder, trains one GVM per variant with the
same budget, and writes the Appendix C accuracy of each as markdown and JSON.

    python benchmarks/gvm_ablation.py --demo runs/demo --epochs 2 --output docs/results/gvm_ablation.json
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

VARIANTS = {  # name: (tau, td_lambda, value_normalization)
    "lab default: no tau, MC (lambda 1), no norm": ("none", 1.0, "none"),
    "tau on": ("policy", 1.0, "none"),
    "TD(0) instead of MC": ("none", 0.0, "none"),
    "batch normalisation on": ("none", 1.0, "batch"),
    "paper: tau, TD(0), batch normalisation": ("policy", 0.0, "batch"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", required=True, help="a finished `dvpo demo` folder (its data/ and sft/)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    setup_logging()
    demo, work = Path(args.demo), Path(args.output).with_suffix("")
    results = {}
    for index, (name, (tau, lam, norm)) in enumerate(VARIANTS.items()):
        started = time.perf_counter()
        out = work / f"variant{index}"
        run_gvm(GvmConfig(model=str(demo / "sft"), data=str(demo / "data" / "rated.jsonl"), out=str(out),
                          tau=tau, td_lambda=lam, value_normalization=norm,
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
