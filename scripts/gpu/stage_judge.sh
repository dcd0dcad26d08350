#!/usr/bin/env bash
# GPU: grade committed `aspd bench speed` answers with a local judge model served by `aspd serve` (real HTTP on
# loopback), through `aspd bench quality`. The server stays up between calls while the machine is warm.
# Usage: [LIMIT=N] [CONCURRENCY=N] bash scripts/gpu/stage_judge.sh JUDGE ANSWERS_DIR BENCH_DIR TAG [TAG ...]
#   JUDGE must be received (/root/models/JUDGE.gguf). ANSWERS_DIR/TAG/results.json is copied to $OUT/TAG/,
#   graded there (--update adds the scores to its rows) and written with $OUT/TAG/quality.json.
set -euo pipefail
judge=$1 answers=$2 bench=$3
shift 3
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
[ -d /tmp/site/fastapi ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl .xfer/srv/*.whl
[ -d "$ASPD_CACHE/models/$judge" ] || python3 -m aspd.cli models fetch "$judge" --gguf "/root/models/$judge.gguf" -q
up() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8011/health', timeout=2)" 2>/dev/null; }
if ! up; then
  setsid nohup python3 -m aspd.cli serve --model "$judge" --port 8011 > /root/serve.log 2>&1 < /dev/null &
  for _ in $(seq 180); do up && break; sleep 1; done
  up || { tail -20 /root/serve.log; exit 1; }
fi
for tag in "$@"; do
  mkdir -p "$OUT/$tag"
  [ -f "/root/graded/$tag/results.json" ] || { mkdir -p "/root/graded/$tag"; cp "$answers/$tag/results.json" "/root/graded/$tag/"; }
  t0=$(date +%s)
  python3 -m aspd.cli bench quality --answers "/root/graded/$tag/results.json" --judge-url http://127.0.0.1:8011/v1 \
    --judge-model "$judge" --bench-dir "$bench" --cache-dir /root/judge_cache --max-tokens 512 --timeout 300 \
    --concurrency "${CONCURRENCY:-4}" --update ${LIMIT:+--limit $LIMIT} 2> "$OUT/$tag/judge.log"
  tail -1 "$OUT/$tag/judge.log"
  cp "/root/graded/$tag/results.json" "/root/graded/$tag/quality.json" "$OUT/$tag/"
  echo "$tag: $(( $(date +%s) - t0 )) s"
done
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
