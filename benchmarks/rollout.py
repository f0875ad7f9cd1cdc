"""Rollout speed: tokens per second of `generate` (engine hf) and of the static engine, beside the device's floor.

The model is freshly initialised at the lab's small size, at medium, or at Qwen2.5-0.5B's shape; the
batch samples at temperature 1 with the RL loop's seeded noise, and every response runs to
`--new-tokens` (eos suppressed), so both engines decode the same number of tokens. The engines run
interleaved, `--repeats` times each after one warm-up, and the median counts; the JSON also says
whether both drew the same tokens.

The floor is the time the decoding could not go below on this device: per forward pass, the larger of
its matrix-product FLOPs over the device's peak matmul rate and its bytes (weights, plus the KV cache
read) over its memory bandwidth, for the prefill and each decoding step. Both rates are measured here,
at the start of the run (a large square product; a large copy).

    python benchmarks/rollout.py --size medium --batch 8 --new-tokens 32 --output benchmarks/results/rollout_cpu_medium.json
    python benchmarks/rollout.py --size 0.5b --dtype bfloat16 --batch 32 --prompt-tokens 64 --new-tokens 128 \\
        --output OUT/rollout_gpu_0.5b.json   # on a GPU
    python benchmarks/rollout.py --size medium --profile ...   # adds where each engine's time goes, by operator
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from efficiency import GPU_SHAPES, GPU_VOCAB

LAB_VOCAB = 1024  # `dvpo init`'s default vocabulary


def build_model(size: str, dtype: torch.dtype, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    from dvpo.models.init import MODEL_SIZES

    dims = GPU_SHAPES.get(size) or MODEL_SIZES[size]
    config = LlamaConfig(vocab_size=GPU_VOCAB if size in GPU_SHAPES else LAB_VOCAB, max_position_embeddings=2048,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None,
                         **{"tie_word_embeddings": False, **dims})
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measured_rates(device: torch.device, dtype: torch.dtype) -> dict:
    """This device's peak matmul rate (a large square product, compute bound) and its memory bandwidth (a large
    copy, read plus write): the two rates no kernel can beat."""
    side = 1024 if device.type == "cpu" else 8192
    a = torch.randn(side, side, device=device, dtype=dtype)
    reps = 5 if device.type == "cpu" else 50
    a @ a
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ a
    sync(device)
    flops = 2 * side**3 * reps / (time.perf_counter() - start)
    big = torch.empty(256 * 2**20 // 4, device=device, dtype=torch.float32)
    out = torch.empty_like(big)
    out.copy_(big)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        out.copy_(big)
    sync(device)
    bandwidth = 2 * big.numel() * 4 * 5 / (time.perf_counter() - start)
    return {"matmul_flops_per_second": flops, "bandwidth_bytes_per_second": bandwidth}


def floor_seconds(model, batch: int, prompt_tokens: int, new_tokens: int, rates: dict) -> dict:
    """The floor of one call: prefill plus `new_tokens - 1` decoding steps (the last token needs no forward)."""
    config = model.config
    element = next(model.parameters()).element_size()
    weights = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    head_dim = config.hidden_size // config.num_attention_heads
    kv_per_token = 2 * config.num_hidden_layers * (config.num_key_value_heads or config.num_attention_heads) * head_dim

    def forward(rows: int, context: int) -> float:
        flops = 2 * weights * rows + 2 * kv_per_token * rows * context  # matmuls, then attention's two products
        bytes_read = weights * element + kv_per_token * context * batch * element
        return max(flops / rates["matmul_flops_per_second"], bytes_read / rates["bandwidth_bytes_per_second"])

    prefill = forward(batch * prompt_tokens, prompt_tokens)
    steps = sum(forward(batch, prompt_tokens + t) for t in range(1, new_tokens))
    return {"prefill": prefill, "decoding": steps, "total": prefill + steps}


def profile_split(run, device: torch.device) -> dict:
    """Fractions of one call's operator time in matrix products, attention and everything else."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
    totals = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        own = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        name = event.key
        kind = ("matmul" if any(k in name for k in ("aten::mm", "aten::addmm", "aten::bmm", "_linear_pointwise"))
                else "attention" if "scaled_dot_product" in name or "attention" in name else "other")
        totals[kind] += own
    whole = sum(totals.values()) or 1.0
    return {kind: round(value / whole, 3) for kind, value in totals.items()} | {"operator_seconds": whole / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="medium", choices=["small", "medium", *GPU_SHAPES])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--profile", action="store_true", help="also split each engine's time by operator kind")
    parser.add_argument("--output", required=True, help="JSON path")
    args = parser.parse_args()

    from dvpo.rollout.sampling import SharedNoise, sample

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    model = build_model(args.size, dtype, device)
    prompts = torch.randint(2, model.config.vocab_size, (args.batch, args.prompt_tokens),
                            generator=torch.Generator().manual_seed(0)).tolist()

    def run(engine: str):
        return sample(model, prompts, 0, 1, args.new_tokens, temperature=1.0, min_new_tokens=args.new_tokens,
                      noise=SharedNoise(0), engine=engine)

    rates = measured_rates(device, dtype)
    drawn = {engine: run(engine).response_ids for engine in ("hf", "static")}  # warm-up, and the tokens compared
    seconds: dict[str, list[float]] = {"hf": [], "static": []}
    for _ in range(args.repeats):
        for engine in seconds:
            sync(device)
            start = time.perf_counter()
            run(engine)
            sync(device)
            seconds[engine].append(time.perf_counter() - start)
    tokens = args.batch * args.new_tokens
    engines = {engine: {"tokens_per_second": tokens / statistics.median(times), "seconds": times}
               for engine, times in seconds.items()}
    if args.profile:
        for engine in engines:
            engines[engine]["operator_split"] = profile_split(lambda: run(engine), device)
    floor = floor_seconds(model, args.batch, args.prompt_tokens, args.new_tokens, rates)
    result = {
        "size": args.size, "parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": args.dtype, "batch": args.batch,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
        "engines": engines,
        "speedup": engines["static"]["tokens_per_second"] / engines["hf"]["tokens_per_second"],
        "floor_tokens_per_second": tokens / floor["total"], "floor_seconds": floor, "rates": rates,
        "same_tokens": torch.equal(drawn["hf"], drawn["static"]),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.size} on {device} ({args.dtype}, batch {args.batch}, {args.new_tokens} new tokens): "
          f"hf {engines['hf']['tokens_per_second']:.0f} tok/s, static {engines['static']['tokens_per_second']:.0f} "
          f"tok/s ({result['speedup']:.2f}x), floor {result['floor_tokens_per_second']:.0f} tok/s, "
          f"same tokens: {result['same_tokens']}")


if __name__ == "__main__":
    main()
