"""Where one RL step's time goes: torch.profiler over one step of the real `dvpo rl` loop.

Prints the step's operator table and its matrix-product time (aten::mm, addmm, bmm), the part
no engineering outside the kernels removes; at the peer-timing settings this bounds how fast a
step can be at all (see docs/rl.md). Models and prompts are those of `efficiency.py`.

    python benchmarks/profile_step.py --algo dvpo --peer small
    python benchmarks/profile_step.py --algo dvpo --peer small --no-tau
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from efficiency import build_models

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="dvpo", choices=["dvpo", "ppo"])
    parser.add_argument("--peer", default="small", choices=["tiny", "small"])
    parser.add_argument("--no-tau", action="store_true", help="a GVM that scores [x; y] alone (the lab's)")
    parser.add_argument("--step", type=int, default=3, help="the step profiled (earlier ones warm up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import dvpo.trainers.rl as rl
    from dvpo.cli import main as dvpo_main

    original_step, report = rl.RlLoop.step, {}

    def profiled_step(loop, step):
        if step + 1 != args.step:
            return original_step(loop, step)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            record = original_step(loop, step)
        events = prof.key_averages()
        report["table"] = events.table(sort_by="self_cpu_time_total", row_limit=15)
        report["matmul_s"] = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
        report["profiled_s"] = sum(e.self_cpu_time_total for e in events) / 1e6
        report["record"] = record
        return record

    rl.RlLoop.step = profiled_step
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp), argparse.Namespace(peer=args.peer, size=None, vocab=2978, levers=True,
                                                            prompt_tokens=16))
        # untrained GVMs record no validation accuracy for the default `reliability` weight; `stored` costs the same
        source = (["--gvm", models["gvm-no-tau" if args.no_tau else "gvm"], "--dvpo-normalization", "stored"]
                  if args.algo == "dvpo" else ["--reward-model", models["rm"]])
        dvpo_main(["rl", "--algo", args.algo, "--policy", models["policy"], "--prompts", models["prompts"],
                   "--out", str(Path(tmp) / "rl"), *source, "--steps", str(args.step), "--rollout-batch-size", "8",
                   "--mini-batch-size", "8", "--ppo-epochs", "1", "--learning-rate", "1e-5", "--kl-coef", "0.05",
                   "--kl-target", "0", "--max-new-tokens", "32", "--min-new-tokens", "32", "--save-every", "100000"])
    record = report["record"]
    print(report["table"])
    print(json.dumps({"algo": args.algo, "peer": args.peer, "tau": not args.no_tau, "threads": args.threads,
                      "time_split_of_the_profiled_step": {k: round(record[k], 3) for k in
                                                  ("time_generation", "time_forward", "time_update")},
                      "profiled_cpu_s": round(report["profiled_s"], 3), "matmul_s": round(report["matmul_s"], 3)},
                     indent=1))


if __name__ == "__main__":
    main()
