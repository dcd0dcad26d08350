#!/usr/bin/env bash
# The parallel decoders side by side on one question file (issue 9): ASPD, PASTA-LANG and Skeleton-of-Thought
# against serial decoding, in one `aspd bench speed` process, with per-token NLL under the original model.
# A run longer than one device call resumes: call it again with the same arguments (aspd bench speed --resume).
# Usage: [LIMIT=N] [BUDGET_S=560] bash scripts/gpu/stage_compare.sh BASE QUESTIONS.jsonl TAG
#   BASE must be received (/root/models/BASE.gguf). Models: aspd-BASE, pasta-BASE:pasta, BASE:sot; baselines
#   seq-BASE (serial) and BASE:serial. Writes $OUT/TAG/ (results.{json,md}, or rows.partial.jsonl if unfinished).
set -euo pipefail
base=$1 questions=$2 tag=$3
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl 2>/dev/null || true
[ -d "$ASPD_CACHE/models/$base" ] || python3 -m aspd.cli models fetch "$base" --gguf "/root/models/$base.gguf" -q
out=/root/work/bench/$tag
resume=(); [ -f "$out/rows.partial.jsonl" ] && resume=(--resume)
rc=0
timeout "${BUDGET_S:-560}" python3 -m aspd.cli bench speed --model "aspd-$base" --model "pasta-$base:pasta" \
  --model "$base:sot" --baseline "seq-$base" --baseline "$base:serial" --bench "$questions" ${LIMIT:+--limit $LIMIT} \
  --paper-sampling --repetition-penalty 1.05 --max-new-tokens 512 --nll-model "$base" --out "$out" "${resume[@]}" 2>&1 \
  | tr '\r' '\n' | grep -v -E "it/s\]|s/it\]|^\s*$" || rc=$?
mkdir -p "$OUT/$tag" && cp -r "$out/." "$OUT/$tag/"
exit "$rc"
