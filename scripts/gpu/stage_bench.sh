#!/usr/bin/env bash
# GPU stage 4 of the recipe: an ASPD model against its Seq baseline on a question file, side by side in one
# process (aspd bench speed), with per-token NLL under the original model.
# Usage: [LIMIT=N] [ENGINE=fast|eager] bash scripts/gpu/stage_bench.sh BASE ASPD SEQ QUESTIONS.jsonl TAG
#   BASE must be received (/root/models/BASE.gguf); ASPD/SEQ are registry names or folders.
# Writes $OUT/TAG/results.{json,md}.
set -euo pipefail
base=$1 aspd=$2 seq=$3 questions=$4 tag=$5
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl 2>/dev/null || true
[ -d "$ASPD_CACHE/models/$base" ] || python3 -m aspd.cli models fetch "$base" --gguf "/root/models/$base.gguf" -q
python3 -m aspd.cli bench speed --model "$aspd" --baseline "$seq" --bench "$questions" ${LIMIT:+--limit $LIMIT} ${ENGINE:+--engine $ENGINE} --paper-sampling \
  --repetition-penalty 1.05 --max-new-tokens 512 --nll-model "$base" --out "$OUT/$tag" 2>&1 \
  | tr '\r' '\n' | grep -v -E "it/s\]|s/it\]|^\s*$"
