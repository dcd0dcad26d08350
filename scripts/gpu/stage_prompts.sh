#!/usr/bin/env bash
# GPU stage: the teacher writes one user question per generation request (data/prompts/synth_requests.jsonl.gz).
# Usage (device run, carry .xfer/whl): bash scripts/gpu/stage_prompts.sh NAME [BATCH] [SECONDS] [REQUESTS]
#   NAME      teacher registry name (qwen2.5-coder-1.5b); reads the received /root/models/NAME.gguf
#   BATCH     prompts per generate call (default 256)
#   SECONDS   stop generating after this long (default 480) so the call ends inside its limit
#   REQUESTS  request file in the working tree (default data/prompts/synth_requests.jsonl.gz)
# Writes $OUT/prompts_answered_NAME.jsonl.gz (every request field + answer + finish), its .meta.json, and
# $OUT/prompts_collect_NAME.json (what `aspd prompts collect` would keep so far). Resumable: run it again on the
# same machine and it continues with the requests not yet answered; on a fresh machine, carry the last
# $OUT/prompts_answered_NAME.jsonl.gz back as .xfer/data/ and it continues from that. It prints "remaining 0"
# when done. The answered file for 32,000 requests is about 6 MB gzipped (the $OUT limit is 16 MiB a file).
set -euo pipefail
name=$1 batch=${2:-256} budget=${3:-480} requests=${4:-data/prompts/synth_requests.jsonl.gz}
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl
[ -d "$ASPD_CACHE/models/$name" ] || python3 -m aspd.cli models fetch "$name" --gguf "/root/models/$name.gguf" -q
mkdir -p /root/work
plain=/root/work/synth_requests.jsonl out=/root/work/prompts_answered_$name.jsonl
[ -s "$plain" ] || gzip -dc "$requests" > "$plain"  # aspd distill reads plain JSONL
prev=.xfer/data/prompts_answered_$name.jsonl.gz
if [ ! -s "$out" ] && [ -f "$prev" ]; then gzip -dc "$prev" > "$out"; fi  # a fresh machine: continue a carried run
touch "$out"
# Short replies: a question is one to a few lines; extraction requests include a short text (the longest).
timeout "$budget" python3 -m aspd.cli distill --resume --model "$name" --prompts "$plain" --output "$out" \
  --batch-size "$batch" --max-new-tokens 320 --temperature 0.7 --top-k 50 --top-p 0.9 --repetition-penalty 1.05 \
  --seed 0 2>&1 | tr '\r' '\n' | grep -v "it/s\]" | tail -5 || true
# a run stopped by the timeout can leave a torn last line: drop it as `distill --resume` would
python3 -c "import sys; from pathlib import Path; from aspd.distill import done_ids; done_ids(Path(sys.argv[1]))" "$out"
total=$(wc -l < "$plain") done_n=$(wc -l < "$out")
echo "answered $done_n of $total, remaining $((total - done_n))"
gzip -c "$out" > "$OUT/prompts_answered_$name.jsonl.gz"
[ ! -f "$out.meta.json" ] || cp "$out.meta.json" "$OUT/prompts_answered_$name.meta.json"
python3 -m aspd.cli prompts collect --input "$out" --output /root/work/synth_prompts.jsonl \
  --report "$OUT/prompts_collect_$name.json" || true
