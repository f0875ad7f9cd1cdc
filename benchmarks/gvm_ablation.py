"""GVM ablation: tau x TD(lambda 0 vs 1) x batch normalisation, 2 x 2 x 2, over seeds and lab tasks.

For each (task, seed) it builds the lab (data, tokenizer, SFT model, exactly as `dvpo demo --task T
--seed S` does, reusing what is already under --work) and trains one GVM per variant with the
recipe's other settings (configs/recipes/small/gvm.yaml) and the same budget. It reports the
validation accuracy (the split carved from the training data, which picks the checkpoint) and the
held-out test accuracy (mean aggregation), as mean +- std over seeds, in markdown and JSON.

    python benchmarks/gvm_ablation.py --tasks digits arith --seeds 0 1 2 --work runs/ablation \
        --output docs/results/gvm_ablation.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

from dvpo.eval.gvm_accuracy import evaluate_gvm
from dvpo.pipeline import FULL, Timer, gvm_config, prepare_lab, sft_config
from dvpo.trainers.common import setup_logging
from dvpo.trainers.gvm import run_gvm
from dvpo.trainers.run_dir import is_complete
from dvpo.trainers.sft import run_sft

TAU = ("none", "policy")
TD_LAMBDA = (1.0, 0.0)
NORMALIZATION = ("none", "batch")


def variant_name(tau: str, lam: float, norm: str) -> str:
    return f"tau {tau}, {'TD(0)' if lam == 0 else 'MC'}, norm {norm}"


def run_cell(work: Path, task: str, seed: int, tau: str, lam: float, norm: str, epochs: float | None) -> dict:
    root = work / task / f"seed{seed}"
    data, init = prepare_lab(root, FULL, seed, Timer(), task=task)
    sft = root / "sft"
    if not is_complete(sft):
        run_sft(sft_config(init, data, sft, FULL, seed))
    out = root / f"gvm-{tau}-{lam:g}-{norm}"
    cfg = gvm_config(sft, data, out, FULL, seed)
    cfg = dataclasses.replace(cfg, tau=tau, td_lambda=lam, value_normalization=norm,
                              **({"epochs": epochs} if epochs else {}))
    started = time.perf_counter()
    if not is_complete(out):
        run_gvm(cfg)
    done = json.loads((out / "dvpo_complete.json").read_text())
    test = evaluate_gvm(str(out), str(data / "rated_test.jsonl"), seed=seed)
    return {"validation": done["validation_accuracy"], "test": test["accuracy"]["mean"],
            "seconds": round(time.perf_counter() - started, 1)}


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:  # one seed has no spread to show
        return f"{100 * mean:.1f}%"
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--tau", nargs="+", default=list(TAU), choices=TAU,
                        help="train only these tau variants (two processes can then split the grid)")
    parser.add_argument("--epochs", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--work", required=True, help="folder for the labs and the GVMs (reused when re-run)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--report-only", action="store_true",
                        help="write the tables from the cells already in --output; train nothing")
    args = parser.parse_args()
    setup_logging()
    output = Path(args.output)
    results = json.loads(output.read_text())["results"] if output.exists() else {}
    variants = list(itertools.product(args.tau, TD_LAMBDA, NORMALIZATION))
    for task, seed, (tau, lam, norm) in itertools.product(args.tasks, args.seeds, variants):
        key = f"{task}/{seed}/{variant_name(tau, lam, norm)}"
        if key not in results and not args.report_only:
            results[key] = run_cell(Path(args.work), task, seed, tau, lam, norm, args.epochs)
            output.write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))
    lines = ["GVM ablation: pairwise accuracy (mean aggregation) on the validation split that picks the "
             "checkpoint, and on held-out test pairs; mean ± std over seeds "
             f"{', '.join(map(str, args.seeds))} (the last column: how many finished); command in the script's "
             "docstring.", "",
             "| task | variant | validation | test | seeds |", "| --- | --- | --- | --- | --- |"]
    for task, (tau, lam, norm) in itertools.product(args.tasks, variants):
        cells = [results[k] for k in results if k.startswith(f"{task}/") and k.endswith(variant_name(tau, lam, norm))]
        if cells:
            lines.append(f"| {task} | {variant_name(tau, lam, norm)} | {spread([c['validation'] for c in cells])} | "
                         f"{spread([c['test'] for c in cells])} | {len(cells)} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
