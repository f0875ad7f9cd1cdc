"""DVPO from Python, on the digits lab, in the two ways docs/api.md walks through.

1. With rated data (prompt, completion, score), as a TRL user with a preference or rating set has:
   SFTTrainer -> GVMTrainer -> DVPOTrainer.
2. With only a reward function: rate_responses (samples of the SFT model scored by the function) ->
   GVMTrainer -> DVPOTrainer; GRPOTrainer on the same function beside it.

    python examples/api_gvm_dvpo.py                                  # the lab's small model, its recipes
    python examples/api_gvm_dvpo.py --model smollm2-135m-instruct    # the real pretrained model (`dvpo models get`)
    python examples/api_gvm_dvpo.py --quick                          # a smoke run of a few steps each

Every run writes its folder under --out (the same folders `dvpo <stage>` writes) and prints the lab
judge's score of each policy on held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datasets import Dataset

import dvpo
from dvpo.lab.make_data import make_lab_data
from dvpo.lab.tasks import judge_completions
from dvpo.models.init import init_model

sys.path.insert(0, str(Path(__file__).parent))
from lab_rewards import digits_only, exact_answer  # noqa: E402  (rule-based rewards, TRL's reward_funcs convention)


def rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/api_example")
    parser.add_argument("--model", default=None, help="a pretrained model (default: a fresh lab Llama)")
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage")
    args = parser.parse_args()
    out, recipe = Path(args.out), "smollm2" if args.model else "small"
    quick = args.quick
    steps = {"max_steps": 4} if quick else {}
    rl_steps = {"steps": 3, "rollout_batch_size": 8, "mini_batch_size": 4, "eval_every": 0} if quick else {}

    data = make_lab_data(out / "data", seed=0, n_sft=300 if quick else 1200, n_rated=200 if quick else 600,
                         n_rl=100 if quick else 600, n_test=20 if quick else 100, n_rated_test=20 if quick else 100)
    base = args.model or str(init_model([str(data["sft"]), str(data["rated"])], "tiny" if quick else "small",
                                        str(out / "init")))

    sft = dvpo.SFTTrainer(model=base, args=dvpo.SFTConfig.from_recipe(recipe, output_dir=str(out / "sft"), **steps),
                          train_dataset=Dataset.from_list(rows(data["sft"])))
    sft.train()
    prompts = Dataset.from_list(rows(data["prompts"]))
    test_prompts = rows(data["test_prompts"])

    # 1. Rated data -> a GVM -> DVPO.
    gvm = dvpo.GVMTrainer(model=str(sft.args.output_dir),
                          args=dvpo.GVMConfig.from_recipe(recipe, output_dir=str(out / "gvm"), **steps),
                          train_dataset=Dataset.from_list(rows(data["rated"])), eval_dataset=rows(data["rated_test"]))
    print(f"GVM held-out pairwise accuracy: {gvm.train()['eval_pairwise_accuracy']:.3f}")
    policy = dvpo.DVPOTrainer(model=str(sft.args.output_dir), value_model=gvm,
                              args=dvpo.DVPOConfig.from_recipe(recipe, output_dir=str(out / "dvpo"), **rl_steps),
                              train_dataset=prompts, eval_dataset=test_prompts, score_fn=judge_completions)
    print(f"DVPO (rated data): judge {policy.train()['eval_score']:.2f}")

    # 2. Only a reward function -> rated samples of the SFT model -> a GVM -> DVPO; GRPO on the same function.
    rated = dvpo.rate_responses(str(sft.args.output_dir), prompts.select(range(60 if quick else 300)),
                                out / "rated_by_function.jsonl", reward_funcs=[exact_answer, digits_only], samples=4,
                                max_new_tokens=24)
    gvm_fn = dvpo.GVMTrainer(model=str(sft.args.output_dir),
                             args=dvpo.GVMConfig.from_recipe(recipe, output_dir=str(out / "gvm_fn"), **steps),
                             train_dataset=rated)
    gvm_fn.train()
    policy_fn = dvpo.DVPOTrainer(model=str(sft.args.output_dir), value_model=gvm_fn,
                                 args=dvpo.DVPOConfig.from_recipe(recipe, output_dir=str(out / "dvpo_fn"), **rl_steps),
                                 train_dataset=prompts, eval_dataset=test_prompts, score_fn=judge_completions)
    print(f"DVPO (reward function): judge {policy_fn.train()['eval_score']:.2f}")
    grpo = dvpo.GRPOTrainer(model=str(sft.args.output_dir), reward_funcs=[exact_answer, digits_only],
                            args=dvpo.GRPOConfig.from_recipe(recipe, output_dir=str(out / "grpo"), **rl_steps),
                            train_dataset=prompts, eval_dataset=test_prompts, score_fn=judge_completions)
    print(f"GRPO (reward function): judge {grpo.train()['eval_score']:.2f}")


if __name__ == "__main__":
    main()
