#!/usr/bin/env bash
# GPU stage for the engine: convert the received SmolLM2 GGUF, run the exactness checks, the engine speed
# benchmark and a short bf16 LoRA fine-tune. Needs .xfer/whl (the gguf wheel) carried. Writes to $OUT.
set -euo pipefail
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m aspd.cli models fetch smollm2-135m --gguf /root/models/smollm2-135m.gguf -q
python3 scripts/gpu/engine_checks.py --model smollm2-135m --out "$OUT/engine_checks_h100_smollm2-135m.json"
python3 benchmarks/engine_speed.py --model smollm2-135m --device cuda --out "$OUT/engine_speed_gpu_smollm2-135m"
python3 -m aspd.cli train --model smollm2-135m --data examples/parallel_samples.jsonl --output /root/runs/lora \
  --lora --lr 1e-3 --max-steps 40 --batch-size 4 --logging-steps 5 --save-steps 1000 2>&1 \
  | tr '\r' '\n' | grep -v -E "it/s\]|s/it\]|^\s*$" | tee "$OUT/lora_smollm2_gpu.log"
