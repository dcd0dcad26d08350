#!/usr/bin/env bash
# GPU stage: convert a received GGUF and self-distil answers for the training prompts.
# Usage (device run, carry .xfer/whl and .xfer/data): bash scripts/gpu/stage_distill.sh NAME BATCH
# Reads /root/models/NAME.gguf and .xfer/data/train_prompts.jsonl; writes $OUT/distill_NAME.jsonl.gz.
set -euo pipefail
name=$1 batch=${2:-256}
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl
sha256sum "/root/models/$name.gguf"
python3 -m aspd.cli models fetch "$name" --gguf "/root/models/$name.gguf" -q
python3 -m aspd.cli distill --model "$name" --prompts .xfer/data/train_prompts.jsonl \
  --output "/root/distill_$name.jsonl" --batch-size "$batch" --max-new-tokens 512 \
  --temperature 0.7 --top-k 20 --top-p 0.8 --repetition-penalty 1.05 --seed 0 2>&1 | tr '\r' '\n' | grep -v "it/s\]" | tail -5
gzip -c "/root/distill_$name.jsonl" > "$OUT/distill_$name.jsonl.gz"
cp "/root/distill_$name.jsonl.meta.json" "$OUT/"
