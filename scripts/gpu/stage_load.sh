#!/usr/bin/env bash
# GPU stage for continuous batching (issue 20): benchmarks/load_test.py in process (the server's batching model
# thread, no HTTP: needs only torch + transformers) for both base models at 1, 8, 32 and 128 concurrent clients,
# and the one-request-at-a-time baseline (--max-batch 1) at 1 and 8 clients. Writes to $OUT.
# Usage: bash scripts/gpu/stage_load.sh      (needs the received GGUFs, as stage_fast.sh)
# ASPD_COMPILE=0 skips torch.compile of the step (CUDA graphs stay): the warm-up of a 131,072-slot cache then
# takes seconds instead of a cold compile of minutes. ROUNDS (default 8; 4 until the ninth lease, whose 4-round
# SmolLM2 run spent most of its 32-client level in its first seconds) requests per client in the batched runs.
set -euo pipefail
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=${ASPD_CACHE:-/root/cache}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl 2>/dev/null || true
for m in smollm2-135m qwen2.5-coder-0.5b; do
  [ -d "$ASPD_CACHE/models/$m" ] || python3 -m aspd.cli models fetch "$m" --gguf "/root/models/$m.gguf" -q
  python3 benchmarks/load_test.py --inprocess "$m" --device cuda --clients 1,8,32,128 --rounds "${ROUNDS:-8}" --max-tokens 128 \
    --max-batch 128 --max-queue 128 --max-cache-tokens 131072 --out "$OUT/load_test_gpu_${m}_batched" 2>&1 | grep -v "Loading weights"
  python3 benchmarks/load_test.py --inprocess "$m" --device cuda --clients 1,8 --rounds 4 --max-tokens 128 \
    --max-batch 1 --max-queue 128 --out "$OUT/load_test_gpu_${m}_one_at_a_time" 2>&1 | grep -v "Loading weights"
done
