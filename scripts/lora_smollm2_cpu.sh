#!/usr/bin/env bash
# A short LoRA fine-tune of SmolLM2-135M-Instruct on the CPU, on the hand-written example samples.
# Shows the training path end to end on a real model: fetch, control tokens, masks, LoRA, checkpoint, load.
# Usage: bash scripts/lora_smollm2_cpu.sh [OUTPUT_DIR]   (log: docs/results/lora_smollm2_cpu.log)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/lora-smollm2-cpu}
aspd=${ASPD:-.venv/bin/aspd}
{
  echo "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cores; command: $0 $out"
  $aspd train --model smollm2-135m --data examples/parallel_samples.jsonl --output "$out" \
    --lora --lora-r 16 --lr 1e-3 --max-steps 40 --batch-size 4 --logging-steps 5 --save-steps 20 --seed 0
} 2>&1 | tr '\r' '\n' | grep -v -E "it/s\]|s/it\]|^\s*$" | tee docs/results/lora_smollm2_cpu.log
