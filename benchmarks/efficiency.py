"""DVPO vs PPO per RL step: peak memory and seconds per step, same model size, batch and settings, one run.

Each algorithm runs `dvpo rl` (the real loop) in its own subprocess, so each peak memory
reading is that algorithm's alone: process peak RSS on CPU, CUDA max allocated on a GPU.
Seconds per step are the median over the steps after the warm-up, with the time split.
Models are freshly initialised (speed and memory do not depend on training).

    python benchmarks/efficiency.py --size medium --mini-batch 2 --ppo-epochs 4 \
        --output benchmarks/results/efficiency_paper_settings.json   # the paper's Table 3 PPO settings
    python benchmarks/efficiency.py --peer tiny --output benchmarks/results/efficiency_peer_tiny.json
    python benchmarks/efficiency.py --size medium --levers --output benchmarks/results/efficiency_levers.json
    python benchmarks/efficiency.py --model smollm2-135m-instruct --lora-r 16 --batch 16 --new-tokens 32 \
        --output benchmarks/results/efficiency_cpu_smollm2_lora.json   # a real pretrained model, LoRA both sides
    python benchmarks/efficiency.py --size 0.5b --dtype bfloat16 --batch 32 --mini-batch 8 \
        --prompt-tokens 64 --new-tokens 128 --output benchmarks/results/efficiency_gpu_0.5b.json   # on a GPU

`--levers` also runs DVPO with each memory lever: a LoRA policy whose reference is the policy
with adapters off (`--lora-r 8`), gradient checkpointing, both, a LoRA GVM on the policy's
base that runs on the reference's decoder (one frozen backbone instead of two), and a GVM without
tau (it scores [x; y] instead of [tau; x; y], as on the lab). Every step's time split is kept in
the JSON (`per_step`, one list per run, warm-up included), and the file is rewritten after each run.
`--repeats N` runs the algorithms N times, interleaved, and takes the medians over all measured
steps: on a shared machine a slow spell then hits every algorithm, not just the one running.

`--peer tiny|small` uses the settings of docs/peer_timings.md (TRL on this kind of
machine): Llama of hidden 256/4 layers or 512/8 layers, vocab 2978, 8 prompts of exactly 16
tokens, 32 new tokens, 1 PPO epoch, 1 minibatch, lr 1e-5, fixed KL coefficient 0.05, 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PEER = {  # hidden, layers, heads, intermediate; TRL's figures are in docs/peer_timings.md
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=688),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=1376),
}
GPU_SHAPES = {  # Qwen2.5-0.5B's shape: 494M parameters with its 151936-token vocabulary and tied embeddings
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
}
GPU_VOCAB = 151936
TIME_SPLIT = ("time_generation", "time_forward", "time_update")
PEER_TRL_PPO_SECONDS = {"tiny": 1.04, "small": 3.34}
PEER_TRL_PPO_PEAK_MB = {"tiny": 742, "small": 1798}
LEVERS = {"dvpo-lora": ["--lora-r", "8"], "dvpo-checkpointing": ["--gradient-checkpointing"],
          "dvpo-lora-checkpointing": ["--lora-r", "8", "--gradient-checkpointing"],
          "dvpo-shared-backbone": [],  # a LoRA GVM on the policy's base runs on the reference's decoder
          "dvpo-no-tau": []}  # the GVM scores [x; y] alone (the lab's setting), not [tau; x; y]
GVM_OF = {"dvpo-shared-backbone": "gvm-lora", "dvpo-no-tau": "gvm-no-tau"}


def pretrained_models(work: Path, args) -> dict[str, str]:
    """A real pretrained policy (`--model`, e.g. smollm2-135m-instruct) with a GVM and a reward model on its
    backbone (fresh heads: speed and memory do not depend on training), LoRA adapters of rank 8 on both when
    `--lora-r` is set, as the recipes train them. Prompts are the lab's, through the model's chat template."""
    from peft import LoraConfig, get_peft_model

    from dvpo.data.tokenize import encode_prompt
    from dvpo.models.loading import load_causal_lm, load_tokenizer, model_reference, resolve_model
    from dvpo.models.reward_model import RmMeta, build_reward_model
    from dvpo.models.value_model import GvmMeta, build_value_model

    policy_dir = resolve_model(args.model)
    tokenizer = load_tokenizer(policy_dir)
    base, lora = model_reference(policy_dir), args.lora_r > 0
    adapters = lambda model, task: get_peft_model(model, LoraConfig(  # noqa: E731
        r=8, lora_alpha=32, task_type=task, target_modules="all-linear", exclude_modules=["score"])) if lora else model
    for name, build, task, meta in (
            ("gvm", build_value_model, "TOKEN_CLS", GvmMeta(base, lora, True, 1.0, 0.0, "batch", max_length=1024)),
            ("rm", build_reward_model, "SEQ_CLS", RmMeta(base, lora, 1024))):
        (work / name / "model").mkdir(parents=True)
        adapters(build(policy_dir), task).save_pretrained(work / name / "model")
        tokenizer.save_pretrained(work / name / "model")
        meta.save(work / name)
    with open(work / "prompts.jsonl", "w") as f:
        for i in range(64):
            digits = " ".join(str((i + k * (1 + i // 10)) % 10) for k in range(args.prompt_tokens))
            f.write(json.dumps({"prompt": f"repeat {digits}"}) + "\n")
    prompt_tokens = len(encode_prompt(tokenizer, f"repeat {' '.join('0' * args.prompt_tokens)}"))
    n_params = sum(p.numel() for p in load_causal_lm(policy_dir).parameters())
    return {"policy": policy_dir, "gvm": str(work / "gvm"), "rm": str(work / "rm"),
            "prompts": str(work / "prompts.jsonl"), "parameters": n_params, "prompt_tokens": prompt_tokens}


def build_models(work: Path, args) -> dict[str, str]:
    """A policy, a GVM and a reward model of the same size, all freshly initialised (or `pretrained_models`)."""
    if args.model:
        return pretrained_models(work, args)
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from peft import LoraConfig, get_peft_model

    from dvpo.lab.make_data import make_lab_data
    from dvpo.models.init import MODEL_SIZES
    from dvpo.models.loading import model_reference
    from dvpo.models.reward_model import RmMeta, build_reward_model
    from dvpo.models.tokenizer import train_tokenizer
    from dvpo.models.value_model import GvmMeta, build_value_model

    data = make_lab_data(work / "data", n_sft=50, n_rated=50, n_rl=200, n_test=10, n_rated_test=10)
    texts = [json.loads(line)["prompt"] for line in open(data["rated"])]
    tokenizer = train_tokenizer(texts + ["0 1 2 3 4 5 6 7 8 9 repeat sort reverse"], vocab_size=512)
    dims = PEER[args.peer] if args.peer else GPU_SHAPES.get(args.size) or MODEL_SIZES[args.size]
    config = LlamaConfig(vocab_size=args.vocab or len(tokenizer), max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, **{"tie_word_embeddings": False, **dims})
    torch.manual_seed(0)
    policy_dir = work / "policy"
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    lora_gvm = lambda path: get_peft_model(build_value_model(path), LoraConfig(  # noqa: E731
        r=8, lora_alpha=32, task_type="TOKEN_CLS", target_modules="all-linear", exclude_modules=["score"]))
    base = model_reference(str(policy_dir))
    builds = [("gvm", build_value_model, GvmMeta(base, False, True, 1.0, 0.0, "batch", max_length=1024)),
              ("rm", build_reward_model, RmMeta(base, False, 1024))]
    if args.levers:
        builds.append(("gvm-lora", lora_gvm, GvmMeta(base, True, True, 1.0, 0.0, "batch", max_length=1024)))
        builds.append(("gvm-no-tau", build_value_model, GvmMeta(base, False, False, 1.0, 0.0, "batch", max_length=1024)))
    for name, build, meta in builds:
        (work / name / "model").mkdir(parents=True)
        build(str(policy_dir)).save_pretrained(work / name / "model")
        tokenizer.save_pretrained(work / name / "model")
        meta.save(work / name)
    # Prompts of exactly `prompt_tokens` tokens after the chat template (2 role tokens + "repeat" + digits).
    with open(work / "prompts.jsonl", "w") as f:
        for i in range(64):  # distinct prompts, so DVPO can draw tau from other prompts of the batch
            digits = " ".join(str((i + k * (1 + i // 10)) % 10) for k in range(args.prompt_tokens - 3))
            f.write(json.dumps({"prompt": f"repeat {digits}"}) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    return {"policy": str(policy_dir), "gvm": str(work / "gvm"), "gvm-lora": str(work / "gvm-lora"),
            "gvm-no-tau": str(work / "gvm-no-tau"),
            "rm": str(work / "rm"),
            "prompts": str(work / "prompts.jsonl"), "parameters": n_params}


def worker(algo: str, models: dict, args) -> dict:
    """Runs `dvpo rl` in this process and returns every step's record (warm-up included)."""
    from dvpo.cli import main

    out = Path(models["policy"]).parent / f"rl-{algo}"
    name, levers = algo, LEVERS.get(algo, [])
    algo = algo.split("-")[0]
    gvm = models[GVM_OF.get(name, "gvm")]
    # The benchmark's GVMs are untrained, so they record no validation accuracy for the default `reliability`
    # weight; `stored` does the same arithmetic.
    source = (["--gvm", gvm, "--dvpo-normalization", "stored"] if algo == "dvpo"
              else ["--reward-model", models["rm"]])
    main(["rl", "--algo", algo, *levers, "--policy", models["policy"], "--prompts", models["prompts"], "--out", str(out),
          *source, "--steps", str(args.warmup + args.steps), "--rollout-batch-size", str(args.batch),
          "--mini-batch-size", str(args.mini_batch), "--ppo-epochs", str(args.ppo_epochs),
          "--learning-rate", str(args.lr), "--kl-coef", str(args.kl_coef), "--kl-target", "0",
          "--max-new-tokens", str(args.new_tokens), "--min-new-tokens", str(args.new_tokens),
          "--save-every", "100000", "--dtype", args.dtype, "--rollout-engine", args.rollout_engine, "--overwrite",
          *(["--lora-r", str(args.lora_r)] if args.lora_r and not levers else [])])
    return {"records": [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]}


def summarize(runs: list[list[dict]], warmup: int) -> dict:
    """Medians over the measured steps of every run of one algorithm; peak memory is the largest."""
    records = [r for run in runs for r in run[warmup:]]
    median = lambda key: statistics.median(r[key] for r in records)  # noqa: E731
    return {"seconds_per_step": median("time_step"), **{key: median(key) for key in TIME_SPLIT},
            "response_length": median("response_length"),
            "peak_memory_bytes": max(r["peak_memory_bytes"] for r in records), "measured_steps": len(records),
            "runs": len(runs),
            "per_step": [[{key: round(r[key], 4) for key in ("time_step", *TIME_SPLIT)} for r in run] for run in runs]}


def warm_up_gpu(seconds: float = 10.0) -> None:
    """Matrix products until the clocks are up, so the first algorithm measured is not the slower for it."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ a
        torch.cuda.synchronize()
    del a
    torch.cuda.empty_cache()


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"DVPO vs PPO per RL step — {s['model']} ({result['parameters'] / 1e6:.1f}M parameters each), "
             f"{s['batch']} prompts x {s['new_tokens']} new tokens, {s['ppo_epochs']} PPO epoch(s), "
             f"{result['device']}, rollout engine {s.get('rollout_engine', 'hf')}, "
             f"median of {s['steps']} steps after {s['warmup']} warm-up"
             + (f" in each of {s['repeats']} interleaved runs" if s.get("repeats", 1) > 1 else ""), "",
             "| | peak memory (MB) | s/step | generation | forward passes | update |", "| --- | --- | --- | --- | --- | --- |"]
    for algo in (k for k in ("dvpo", "ppo", *LEVERS) if k in result):
        r = result[algo]
        lines.append(f"| {algo.upper()} | {r['peak_memory_bytes'] / 2**20:.0f} | {r['seconds_per_step']:.3f} | "
                     f"{r['time_generation']:.3f} | {r['time_forward']:.3f} | {r['time_update']:.3f} |")
    if "ratio" in result:
        ratio = result["ratio"]
        lines.append(f"| DVPO / PPO | {ratio['peak_memory']:.2f}x | {ratio['seconds_per_step']:.2f}x | | | |")
    if "peer_trl_ppo" in result:
        peer = result["peer_trl_ppo"]
        lines.append(f"| TRL PPO (peer note) | {peer['peak_memory_mb']} | {peer['seconds_per_step']} | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="medium", choices=["tiny", "small", "medium", *GPU_SHAPES],
                        help="model shape; 0.5b (Qwen2.5-0.5B's shape and vocabulary) is meant for a GPU")
    parser.add_argument("--peer", choices=sorted(PEER), help="the peer-timing settings instead of --size")
    parser.add_argument("--model", help="a real pretrained policy instead of --size: a folder, Hub id or `dvpo models` "
                        "name (smollm2-135m-instruct); its GVM and reward model share its backbone")
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank of the policy (PPO's critic follows it; "
                        "with --model the GVM and reward model are LoRA adapters of rank 8)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mini-batch", type=int, default=None, help="default: the whole batch (one minibatch)")
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=None, help="model vocabulary (peer settings: 2978)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each algorithm, interleaved (dvpo, ppo, dvpo, ppo, ...); medians over all")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--rollout-engine", default="auto", choices=["auto", "hf", "static"],
                        help="how every run decodes (`dvpo rl --rollout-engine`)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own; 1 with --peer, as the peer note measured)")
    parser.add_argument("--levers", action="store_true", help="also DVPO with LoRA and gradient checkpointing")
    parser.add_argument("--output", required=True, help="JSON path; the markdown table goes next to it (.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer and args.vocab is None:
        args.vocab = 2978
    if args.peer and args.threads is None:
        args.threads = 1
    if args.size in GPU_SHAPES and args.vocab is None:
        args.vocab = GPU_VOCAB
    args.mini_batch = args.mini_batch or args.batch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, json.loads(args.models), args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp), args)
        label = args.model or (f"peer-{args.peer}" if args.peer else args.size)
        result = {"settings": {"model": label + (f", LoRA r {args.lora_r}" if args.lora_r else ""),
                               "batch": args.batch,
                               "mini_batch": args.mini_batch, "ppo_epochs": args.ppo_epochs,
                               "prompt_tokens": models.get("prompt_tokens", args.prompt_tokens),
                               "new_tokens": args.new_tokens,
                               "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "lr": args.lr,
                               "kl_coef": args.kl_coef, "rollout_engine": args.rollout_engine},
                  "parameters": models["parameters"],
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                  else f"CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"}
        if args.peer:
            result["peer_trl_ppo"] = {"seconds_per_step": PEER_TRL_PPO_SECONDS[args.peer],
                                      "peak_memory_mb": PEER_TRL_PPO_PEAK_MB[args.peer]}
        if torch.cuda.is_available():
            warm_up_gpu()
        runs: dict[str, list[list[dict]]] = {}
        for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits every algorithm
            for algo in ("dvpo", "ppo", *(LEVERS if args.levers else ())):
                proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", algo,
                                       "--models", json.dumps(models)], capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    sys.exit(f"{algo} worker failed:\n{proc.stderr[-3000:]}")
                runs.setdefault(algo, []).append(json.loads(lines[-1][len("RESULT "):])["records"])
                result[algo] = summarize(runs[algo], args.warmup)
                write(result, Path(args.output))  # after each run, so a cut-short benchmark keeps what it measured
    print(markdown(result))


def write(result: dict, output: Path) -> None:
    if "dvpo" in result and "ppo" in result:
        dvpo, ppo = result["dvpo"], result["ppo"]
        result["ratio"] = {"peak_memory": dvpo["peak_memory_bytes"] / ppo["peak_memory_bytes"],
                           "seconds_per_step": dvpo["seconds_per_step"] / ppo["seconds_per_step"]}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    output.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
