#!/usr/bin/env bash
# On a machine with CUDA: the GPU tests, the GPU benchmark, then the input path alone.
# Targets (issue 20, one H100): CLIP ViT-L/14 >= 3,400 pairs/s and BLIP-large >= 1,200 captions/s,
# greedy, 20 tokens, with the models never waiting on input (wait_input under 5% of the wall time).
#   scripts/gpu_check.sh            (after `make install`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
"$PY" -m pytest -q -m "gpu or vllm" -p no:cacheprovider
"$PY" scripts/bench.py --device cuda --blip large --clip ViT-L-14 --samples 4096 --per-shard 512 \
  --batch-size 256 --naive-samples 64 --memory --json bench-results-gpu.json
# VLM captioners on both backends, images/s, tokens per image and GPU-hours per million images:
# transformers (a small real-shape Qwen2-VL and LLaVA, random weights), then vLLM where installed
for FAMILY in qwen2_vl llava; do
  "$PY" scripts/bench.py --mode vlm --vlm "$FAMILY" --device cuda --samples 512 --per-shard 128 --batch-size 64 \
    --vlm-tokens 60 --json "bench-vlm-$FAMILY-gpu.json"
done
if "$PY" -c "import vllm" 2>/dev/null; then
  for FAMILY in qwen2_vl llava; do  # the same saved folders, through vLLM's chat API
    "$PY" scripts/bench.py --mode vlm --vlm "$FAMILY" --vlm-backend vllm --device cuda --samples 512 \
      --per-shard 128 --batch-size 256 --vlm-tokens 60 --json "bench-vlm-$FAMILY-vllm-gpu.json"
  done
else
  echo "vLLM not installed: its VLM row is skipped (pip install 'recaption[vllm]')"
fi
"$PY" - <<'PYEOF'
import glob, json

for f in sorted(glob.glob("bench-vlm-*-gpu.json")):
    r = json.load(open(f))["vlm"]
    v = r["vlm"]
    print(f"{f}: {r['backend']} {r['family']}: {v['images_per_s']:.1f} images/s, "
          f"{v['tokens_per_caption']:.1f} tokens/image, {1e6 / v['images_per_s'] / 3600:.1f} GPU-hours per million images")
PYEOF
# each LAION tag head's share of a ViT-L/14 score pass (the CLIP heads on the pass's embedding: under 5%)
"$PY" scripts/bench.py --mode tags --device cuda --clip ViT-L-14 --tag-input generated --samples 4096 \
  --per-shard 512 --batch-size 256 --repeat 3 --json bench-tags-gpu.json
# prepared images/s per CPU core, CPU decoding and nvJPEG, pinned batches (cores capped at what exists)
CORES=$("$PY" -c "import os; n = len(os.sched_getaffinity(0)); print(','.join(str(k) for k in (1, 2, 4, 8, 16) if k <= n))")
"$PY" scripts/bench.py --mode input --device cuda --images 2000 --batch-size 256 --cores "$CORES" \
  --json bench-input-gpu.json
"$PY" - <<'PYEOF'
import json

r = json.load(open("bench-results-gpu.json"))
share = r["pipeline_wait_input_share"]
verdict = "OK" if share < 0.05 else "OVER the 5% target: the GPU waits on input"
print(f"end to end annotate (BLIP-large + ViT-L/14 + SIEVE): {r['pipeline_samples_per_s']:.0f} samples/s; "
      f"wait_input {100 * share:.1f}% of the wall time ({verdict})")
print("stage seconds:", r["pipeline_stage_seconds"])
PYEOF
