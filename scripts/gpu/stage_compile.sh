#!/usr/bin/env bash
# GPU stage for issue #19 (the compiled decode step), one device call of < 8 minutes: for smollm2-135m, then the
# Qwen2.5-Coder models whose GGUF was received (/root/models/NAME.gguf), while time is left:
#   1. benchmarks/engine_speed.py: fast and fast-compiled, HF generate (dynamic and static cache), in one run (the
#      eager engine is left out: host-bound at ~27 ms a step, it would eat the time the compilers need);
#   2. scripts/gpu/check_compiled.py: fp32 greedy tokens of the compiled fast engine == the eager engine's,
#      serially and with a group.
# AB="VAR=value ..." reruns (1) after it with those variables set (e.g. AB="ASPD_COMPILE_SHAPES=static", or
# ASPD_COMPILE_MODE=max-autotune-no-cudagraphs), to $OUT/engine_speed_gpu_<model>_ab, so both land in one call.
# A failing part never stops the stage: if the benchmark dies, it is rerun without the compiled engine, and the
# error text is kept ($OUT/*.log, $OUT/errors.txt). MODELS (space-separated) narrows the list; ENGINES (default
# fast,fast-compiled) and SPEED_S (default 240, the first benchmark's time limit) size part (1): a cold compile and
# HF's own used up 240 s for SmolLM2 in the fifth lease. Needs .xfer/whl
# (scripts/gpu/fetch_wheels.sh) carried unless the models are converted already (a warm machine). Writes to $OUT.
# Usage: bash scripts/gpu/stage_compile.sh [SECONDS]
set -uo pipefail
budget=${1:-420}  # stop starting new parts after this many seconds
start=$SECONDS
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=${ASPD_CACHE:-/root/cache}
export TORCHINDUCTOR_CACHE_DIR=$ASPD_CACHE/inductor  # compiled kernels survive for the next call on this machine
mkdir -p "$OUT"
left() { echo $(( budget - (SECONDS - start) )); }
fail() { echo "$*" | tee -a "$OUT/errors.txt" >&2; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
for m in ${MODELS:-smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b}; do
  if [ ! -d "$ASPD_CACHE/models/$m" ]; then
    if [ ! -f "/root/models/$m.gguf" ]; then
      [ "$m" = smollm2-135m ] && fail "no /root/models/$m.gguf: receive it first (scripts/gpu/stage_receive.sh)"
      continue
    fi
    python3 -m aspd.cli models fetch "$m" --gguf "/root/models/$m.gguf" -q > "$OUT/fetch_$m.log" 2>&1 \
      || { fail "fetch $m failed: $(tail -3 "$OUT/fetch_$m.log")"; continue; }
  fi
  [ "$(left)" -gt 60 ] || { fail "skipped $m: out of time"; continue; }
  log="$OUT/engine_speed_$m.log"
  cap=${SPEED_S:-240}
  timeout $(( $(left) > cap ? cap : $(left) )) python3 benchmarks/engine_speed.py --model "$m" --device cuda \
    --engines "${ENGINES:-fast,fast-compiled}" --repeats 2 --serial-repeats 3 --new-tokens 128 --out "$OUT/engine_speed_gpu_$m" > "$log" 2>&1
  rc=$?
  if [ $rc != 0 ]; then
    fail "engine_speed $m (with compile) exit $rc: $(grep -v -E 'Loading weights' "$log" | tail -5)"
    if [ "$(left)" -gt 40 ]; then
      timeout $(( $(left) > 150 ? 150 : $(left) )) python3 benchmarks/engine_speed.py \
        --model "$m" --device cuda --engines fast --repeats 2 --serial-repeats 3 --new-tokens 128 \
        --out "$OUT/engine_speed_gpu_${m}_nocompile" > "$OUT/engine_speed_${m}_nocompile.log" 2>&1 \
        || fail "engine_speed $m without compile failed too: $(tail -3 "$OUT/engine_speed_${m}_nocompile.log")"
    fi
  fi
  if [ -n "${AB:-}" ] && [ "$(left)" -gt 60 ]; then
    env $AB timeout $(( $(left) > 300 ? 300 : $(left) )) python3 benchmarks/engine_speed.py --model "$m" \
      --device cuda --engines fast-compiled --repeats 2 --serial-repeats 3 --new-tokens 128 \
      --out "$OUT/engine_speed_gpu_${m}_ab" > "$OUT/engine_speed_${m}_ab.log" 2>&1 \
      || fail "engine_speed $m with $AB exit $?: $(tail -3 "$OUT/engine_speed_${m}_ab.log")"
  fi
  [ "$(left)" -gt 40 ] || { fail "skipped the fp32 check of $m: out of time"; continue; }
  timeout $(( $(left) > 150 ? 150 : $(left) )) python3 scripts/gpu/check_compiled.py --model "$m" \
    --out "$OUT/compiled_checks_$m.json" > "$OUT/compiled_checks_$m.log" 2>&1 \
    || fail "check_compiled $m exit $?: $(tail -3 "$OUT/compiled_checks_$m.log")"
done
grep -h -A8 "^## Summary" "$OUT"/engine_speed_gpu_*.md 2>/dev/null
tail -n 1 "$OUT"/compiled_checks_*.log 2>/dev/null
echo "stage_compile: $(( SECONDS - start )) s"
