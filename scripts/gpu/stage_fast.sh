#!/usr/bin/env bash
# GPU stage for the fast engine: exactness against the eager engine on the real ASPD models (checks), or the
# engine speed benchmark of both base models (speed). Needs the received GGUFs, .xfer/whl and .xfer/data carried.
# Usage: bash scripts/gpu/stage_fast.sh checks|speed      Writes to $OUT.
set -euo pipefail
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl 2>/dev/null || true
for base in smollm2-135m qwen2.5-coder-0.5b; do
  [ -d "$ASPD_CACHE/models/$base" ] || python3 -m aspd.cli models fetch "$base" --gguf "/root/models/$base.gguf" -q
done
case $1 in
  checks)
    python3 scripts/gpu/check_fast.py --models aspd-smollm2-135m,aspd-qwen2.5-coder-0.5b \
      --questions .xfer/data/vicuna_bench.jsonl --limit 3 --max-new-tokens 200 --out "$OUT/fast_checks_h100.json" ;;
  speed)
    for m in smollm2-135m qwen2.5-coder-0.5b; do
      python3 benchmarks/engine_speed.py --model "$m" --device cuda --repeats 3 --serial-repeats 5 \
        --out "$OUT/engine_speed_gpu_$m" 2>&1 | grep -v -E "Loading weights|clean_up_tokenization"
    done ;;
  *) echo "usage: stage_fast.sh checks|speed" >&2; exit 2 ;;
esac
