#!/bin/bash
# One prepared run on a lent GPU machine: the 0.5B efficiency benchmark (DVPO vs PPO and DVPO's levers, bf16),
# then, if asked with --demo, `dvpo demo --quick` on CUDA.
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
timeout 480 python3 benchmarks/efficiency.py --size 0.5b --dtype bfloat16 --batch 32 --mini-batch 8 --prompt-tokens 64 \
  --new-tokens 128 --steps 5 --warmup 2 --levers --output "$OUT/efficiency_gpu_0.5b.json" 2>&1 | tail -30 | tee "$OUT/efficiency.log"
if [ "${2:-}" = "--demo" ]; then
  start=$(date +%s)
  timeout 240 python3 -m dvpo demo --quick --out /tmp/demo_gpu > "$OUT/demo_quick.log" 2>&1
  echo "demo exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/demo_quick.log"
  cp /tmp/demo_gpu/report.md "$OUT/demo_report.md" 2>/dev/null
fi
