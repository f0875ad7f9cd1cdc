#!/usr/bin/env bash
# Rule-based rewards on lab 1 (digits), seed 0, every stage by its small recipe (docs/rl.md, "Reward functions"):
#   GRPO and PPO trained on examples/lab_rewards.py:exact_answer with no reward model;
#   dvpo rate of SFT samples with the same function -> dvpo gvm -> DVPO.
# Each model is judged on the 200 held-out test prompts (4 samples each) against SFT's samples.
# Usage: bash benchmarks/reward_functions_lab.sh [WORK_DIR]   (about 40 minutes on one core; re-running resumes)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D="$REPO/.venv/bin/dvpo"
R="$REPO/configs/recipes/small"
FN="$REPO/examples/lab_rewards.py:exact_answer"
MONITOR=(--eval-prompts data/test_prompts.jsonl --score-fn dvpo.lab.tasks:judge_completions --eval-every 25)
W=${1:-runs/reward-functions-lab}
mkdir -p "$W" && cd "$W"
[ -f data/manifest.json ] || $D lab make-data --task digits --out data --n-sft 3000 --n-rated 5000 --n-rl 2000 \
  --n-test 200 --n-rated-test 200
[ -f init/dvpo_init.json ] || $D init --size small --data data/sft.jsonl data/rated.jsonl data/prompts.jsonl \
  --out init --seed 0
[ -f sft/dvpo_complete.json ] || $D sft --config "$R/sft.yaml" --model init --data data/sft.jsonl --out sft --seed 0
[ -f sft_gen.jsonl ] || $D generate --config "$R/generate.yaml" --model sft --prompts data/test_prompts.jsonl \
  --out sft_gen.jsonl --seed 0
[ -f sft_gen.json ] || $D lab judge --generations sft_gen.jsonl --output sft_gen.json
judge() {
  [ -f "$2.json" ] || { $D generate --config "$R/generate.yaml" --model "$1" --prompts data/test_prompts.jsonl \
    --out "$2.jsonl" --seed 0 && $D lab judge --generations "$2.jsonl" --baseline sft_gen.jsonl --output "$2.json"; }
}
for algo in grpo ppo; do
  [ -f $algo/dvpo_complete.json ] || $D rl --config "$R/rl.yaml" --algo $algo --policy sft \
    --prompts data/prompts.jsonl --reward-fn "$FN" --out $algo "${MONITOR[@]}" --seed 0
  judge $algo ${algo}_gen
done
# The rated split's prompts, each once, rated from 4 SFT samples by the function; the GVM by its recipe; DVPO.
[ -f rate_prompts.jsonl ] || "$REPO/.venv/bin/python" -c "
import json
prompts = dict.fromkeys(json.loads(line)['prompt'] for line in open('data/rated.jsonl'))
open('rate_prompts.jsonl', 'w').write(''.join(json.dumps({'prompt': p}) + '\n' for p in prompts))"
$D rate --prompts rate_prompts.jsonl --model sft --samples 4 --reward-fn "$FN" --out rated_fn.jsonl --seed 0
[ -f gvm/dvpo_complete.json ] || $D gvm --config "$R/gvm.yaml" --model sft --data rated_fn.jsonl --out gvm --seed 0
[ -f dvpo/dvpo_complete.json ] || $D rl --config "$R/rl.yaml" --algo dvpo --policy sft --prompts data/prompts.jsonl \
  --gvm gvm --out dvpo "${MONITOR[@]}" --seed 0
judge dvpo dvpo_gen
for f in sft_gen grpo_gen ppo_gen dvpo_gen; do
  "$REPO/.venv/bin/python" -c "import json; d = json.load(open('$f.json')); print('$f', round(d['mean'], 2), d.get('win_rate'))"
done
