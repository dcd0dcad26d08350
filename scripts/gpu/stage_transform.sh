#!/usr/bin/env bash
# GPU stage 2 of the recipe: convert a received GGUF, then transform the model's own answers with the rule-based
# rewriter and the likelihood independence judge run on the model itself (fp32, so the CPU gives the same verdicts).
# Usage (device run, carry .xfer/whl and .xfer/data): bash scripts/gpu/stage_transform.sh NAME [SECONDS]
# Reads /root/models/NAME.gguf and .xfer/data/NAME_in.jsonl (scripts/recipe/join_answers.py --stop-only);
# writes $OUT/transform_NAME.jsonl.gz and its summary. Resumable: run it again if SECONDS ran out.
set -euo pipefail
name=$1 budget=${2:-500}
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl
[ -d "$ASPD_CACHE/models/$name" ] || python3 -m aspd.cli models fetch "$name" --gguf "/root/models/$name.gguf" -q
mkdir -p /root/work
out=/root/work/${name}_t.jsonl
timeout "$budget" python3 -m aspd.cli transform --resume --no-progress --input ".xfer/data/${name}_in.jsonl" \
  --output "$out" --rewriter rules --judge likelihood --target-model "$name" --device cuda --dtype float32 || true
wc -l "$out"
gzip -c "$out" > "$OUT/transform_$name.jsonl.gz"
[ -f "$out.summary.json" ] && cp "$out.summary.json" "$OUT/transform_$name.summary.json"
