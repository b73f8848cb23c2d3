#!/usr/bin/env bash
# On a machine with CUDA: the GPU tests, then the GPU benchmark (issue 7's targets: CLIP ViT-L/14
# >= 2,500 pairs/s and BLIP-large >= 700 captions/s on one H100, greedy, 20 tokens).
#   scripts/gpu_check.sh            (after `make install`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
"$PY" -m pytest -q -m "gpu or vllm" -p no:cacheprovider
"$PY" scripts/bench.py --device cuda --blip large --clip ViT-L-14 --samples 4096 --per-shard 512 \
  --batch-size 256 --naive-samples 64 --memory --json bench-results-gpu.json
