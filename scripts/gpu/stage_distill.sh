#!/usr/bin/env bash
# GPU stage: convert a received GGUF and self-distil answers for the training prompts.
# Usage (device run, carry .xfer/whl and .xfer/data): bash scripts/gpu/stage_distill.sh NAME BATCH [SECONDS]
# Reads /root/models/NAME.gguf and .xfer/data/train_prompts.jsonl; writes $OUT/distill_NAME.jsonl.gz.
# Stops after SECONDS (default 520) so the call ends inside its limit; run it again to resume.
set -euo pipefail
name=$1 batch=${2:-256} budget=${3:-520}
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl
sha256sum "/root/models/$name.gguf"
[ -d "$ASPD_CACHE/models/$name" ] || python3 -m aspd.cli models fetch "$name" --gguf "/root/models/$name.gguf" -q
timeout "$budget" python3 -m aspd.cli distill --resume --model "$name" --prompts .xfer/data/train_prompts.jsonl \
  --output "/root/distill_$name.jsonl" --batch-size "$batch" --max-new-tokens 512 \
  --temperature 0.7 --top-k 20 --top-p 0.8 --repetition-penalty 1.05 --seed 0 2>&1 | tr '\r' '\n' | grep -v "it/s\]" | tail -5 || true
wc -l "/root/distill_$name.jsonl"
gzip -c "/root/distill_$name.jsonl" > "$OUT/distill_$name.jsonl.gz"
cp "/root/distill_$name.jsonl.meta.json" "$OUT/"
