"""What padding costs DVPO's experience forwards, and what length-sorted, trimmed chunks save.

The rows are real lab responses of the lab's behaviour policies (its rated data: short and long
answers), each closed by eos, left-padded prompts and right-padded responses as a rollout holds them.
The GVM reads [tau; x; y], tau another row's prompt and response (a GVM trained with tau, as
`efficiency.py` builds it). Models are freshly initialised at `--size`: speed does not depend on
training. For the reference pass (log-probs, `--rows` rows per forward) and the GVM pass, it reports
the tokens each forward processes, padding included, and the median seconds, before (every chunk at
the batch's width, the GVM on the whole batch at once) and after (`frozen_logprobs` and
`DvpoSource.slot_values`: rows of similar length together, each chunk cut to its own longest row).

    python benchmarks/padding.py --size medium --batch 8 --rows 2 --output benchmarks/results/padding_cpu_medium.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from efficiency import build_models


def lab_rollout(tokenizer, rated: Path, batch: int, seed: int):
    from dvpo.data.tokenize import encode_prompt
    from dvpo.distributed import BatchStats
    from dvpo.rollout.experience import Rollout, build_sequences
    from dvpo.rollout.sampling import SampledBatch

    rows = [json.loads(line) for line in rated.read_text().splitlines()]
    rows = random.Random(seed).sample(rows, batch)
    prompts, texts = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    response_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    pad, p_width, width = tokenizer.pad_token_id, max(map(len, prompt_ids)), max(map(len, response_ids))
    seq = build_sequences(SampledBatch(
        prompt_ids=torch.tensor([[pad] * (p_width - len(p)) + p for p in prompt_ids]),
        prompt_mask=torch.tensor([[0] * (p_width - len(p)) + [1] * len(p) for p in prompt_ids]),
        response_ids=torch.tensor([r + [pad] * (width - len(r)) for r in response_ids]),
        response_mask=torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in response_ids])))
    return Rollout(seq, prompts, texts, prompts, texts, 0, BatchStats(), seed=seed)


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="medium", choices=["tiny", "small", "medium"])
    parser.add_argument("--batch", type=int, default=8, help="rollout rows")
    parser.add_argument("--rows", type=int, default=2, help="rows per forward (the minibatch size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    from dvpo.models.loading import load_causal_lm, load_tokenizer
    from dvpo.models.value_model import load_value_model
    from dvpo.rollout.experience import frozen_logprobs, length_sorted_chunks
    from dvpo.trainers.sources.dvpo import DvpoSource

    with tempfile.TemporaryDirectory() as tmp:
        setup = argparse.Namespace(peer=None, size=args.size, vocab=None, levers=False, prompt_tokens=16)
        models = build_models(Path(tmp), setup)
        tokenizer = load_tokenizer(models["policy"])
        policy = load_causal_lm(models["policy"]).eval()
        gvm = load_value_model(models["gvm"], device="cpu")
        rollout = lab_rollout(tokenizer, Path(tmp) / "data" / "rated.jsonl", args.batch, args.seed)
        seq = rollout.seq
        source = DvpoSource(gvm, "gae", "none", 1.0, 0.95, True, forward_rows=args.rows)
        ids, attention, starts, lengths = source.gvm_inputs(rollout)
        real = {"reference": int(seq.attention_mask.sum()), "gvm": int(attention.sum())}

        def reference_before():
            with torch.no_grad():
                for index in torch.arange(args.batch).split(args.rows):
                    part = seq.rows(index)
                    policy(input_ids=part.input_ids, attention_mask=part.attention_mask,
                           position_ids=part.position_ids, logits_to_keep=part.response_ids.shape[1] + 1)

        def gvm_before():
            with torch.no_grad():
                gvm.slot_values(ids, attention, starts, lengths, normalized=False)

        chunks = length_sorted_chunks(seq.attention_mask.sum(dim=1), args.rows)
        gvm_chunks = length_sorted_chunks(attention.sum(dim=1), args.rows)
        processed = {
            "reference": {"before": seq.input_ids.numel(),
                          "after": sum(seq.rows(i).trimmed().input_ids.numel() for i in chunks)},
            "gvm": {"before": ids.numel(),
                    "after": sum(len(i) * int(attention[i].sum(dim=1).max()) for i in gvm_chunks)},
        }
        seconds = {
            "reference": {"before": median_seconds(reference_before, args.repeats),
                          "after": median_seconds(lambda: frozen_logprobs(policy, seq, 1.0, args.rows), args.repeats)},
            "gvm": {"before": median_seconds(gvm_before, args.repeats),
                    "after": median_seconds(lambda: source.slot_values(ids, attention, starts, lengths),
                                            args.repeats)},
        }
    result = {"size": args.size, "batch": args.batch, "rows": args.rows, "threads": torch.get_num_threads(),
              "real_tokens": real, "processed_tokens": processed, "seconds": seconds,
              "saved": {p: 1 - seconds[p]["after"] / seconds[p]["before"] for p in seconds}}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for p in seconds:
        print(f"{p}: {real[p]} real tokens; processed {processed[p]['before']} -> {processed[p]['after']}; "
              f"{seconds[p]['before']:.3f} -> {seconds[p]['after']:.3f} s ({result['saved'][p]:.0%} saved)")


if __name__ == "__main__":
    main()
