#!/usr/bin/env bash
# Issue 18 on one GPU lease: ASPD and Seq twins of each base on the teacher data (issue 17), then the benches.
# Every step is one device call of at most ten minutes; trainings run in the background between calls, so the calls
# must follow each other while the machine is warm. Bases must be received first (scripts/gpu/stage_receive.sh).
# Carry .xfer/whl (scripts/gpu/fetch_wheels.sh) and .xfer/data (bench/ question files and judge prompts; teacher/
# with the answers and transform of data/teacher).
#
#   setup BASE...                   install wheels, convert the received GGUFs, build the training set
#                                   (SERIAL_SHARE, default 0.25, and MIN_LAYOUT: `aspd transform --to-train`'s
#                                   --serial-share and --min-layout-speedup)
#   train BASE RANK EPOCHS LR       start the ASPD and Seq LoRA fine-tunes of BASE in the background
#   wait [SECONDS [BASE...]]        until every training (of BASE) has ended, or SECONDS; logs, packed adapters -> $OUT
#   bench BASE QUESTIONS TAG        ASPD against Seq, side by side, paper sampling, NLL under the 1.5B (resumable)
#                                   (RUNS="K=W ...": the pairs of several work folders at once, labels aspd-K, seq-K)
#   pairwise TAG BASE [K]           the 1.5B judges ASPD against Seq on TAG's answers, both orders
#   place BASE TAR...               packed adapters of `wait`, carried to a fresh machine: merged model folders in
#                                   $W/m, where `bench` looks (the base must be converted first: `setup BASE`)
set -euo pipefail
# Dry run on the CPU: W=/tmp/w ASPD_CACHE=~/.cache/aspd OUT=/tmp/out MAX_STEPS=2 LIMIT=1 bash scripts/gpu/stage_models.sh ...
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=${ASPD_CACHE:-/root/cache}
w=${W:-/root/work}
m=$w/m
mkdir -p "$w/logs" "$m"
aspd() { python3 -m aspd.cli "$@"; }
quiet() { tr '\r' '\n' | grep -v -E "it/s\]|s/it\]|^\s*$" || true; }
step=$1; shift
case "$step" in
  setup)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl 2>/dev/null || true
    for base in "$@"; do
      [ -d "$ASPD_CACHE/models/$base" ] || aspd models fetch "$base" --gguf "/root/models/$base.gguf" -q
    done
    if [ ! -s "$w/train.jsonl" ]; then  # built once per machine: every base trains on the same samples
      python3 scripts/recipe/teacher_join.py .xfer/data/teacher/answers_qwen2.5-coder-1.5b.jsonl.gz \
        .xfer/data/teacher/transform.jsonl.gz "$w/t.jsonl"
      aspd transform --to-train "$w/t.jsonl" --aspd "$w/train.jsonl" --serial-share "${SERIAL_SHARE:-0.25}" \
        ${MIN_LAYOUT:+--min-layout-speedup $MIN_LAYOUT}
    fi
    nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null || true ;;
  train)
    base=$1 rank=$2 epochs=$3 lr=$4
    for v in aspd seq; do
      flag=(); [ "$v" = seq ] && flag=(--serial)
      rm -rf "$m/$v-$base" "$w/logs/$v-$base".*
      setsid nohup bash -c "/usr/bin/time -f '$v-$base: %e s' python3 -m aspd.cli train --model $base \
        --data $w/train.jsonl --epochs $epochs --batch-size ${BATCH:-4} --pack --max-length ${MAXLEN:-2048} --precision ${PRECISION:-bf16} \
        --logging-steps 5 --save-steps 100000 --seed 0 --lora --lora-r $rank --lora-alpha $((2 * rank)) \
        --lora-dropout 0.05 --lr $lr ${MAX_STEPS:+--max-steps $MAX_STEPS} ${flag[*]} --output $m/$v-$base \
        && python3 -m aspd.cli models pack $m/$v-$base $w/art/$v-$base --base $base \
        && touch $w/logs/$v-$base.done || touch $w/logs/$v-$base.failed" \
        > "$w/logs/$v-$base.log" 2>&1 < /dev/null &
    done
    sleep 20; tail -n 3 "$w"/logs/*.log | quiet ;;
  wait)
    t0=$(date +%s) budget=${1:-540}; shift $(( $# > 0 ? 1 : 0 ))
    logs=(); for base in "${@:-*}"; do logs+=("$w"/logs/*-$base.log); done
    while ls "${logs[@]}" >/dev/null 2>&1; do
      running=0
      for log in "${logs[@]}"; do
        n=${log%.log}; [ -f "$n.done" ] || [ -f "$n.failed" ] || running=$((running + 1))
      done
      [ "$running" = 0 ] && break
      [ $(( $(date +%s) - t0 )) -ge "$budget" ] && { echo "still running: $running"; break; }
      sleep 10
    done
    for log in "${logs[@]}"; do
      n=$(basename "${log%.log}")
      quiet < "$log" > "$OUT/train_$n.log"
      if [ -f "$w/logs/$n.done" ]; then
        tar -C "$w/art" -cf "$OUT/$n.tar" "$n"
        echo "$n: done; $(grep -E '^\S+: [0-9.]+ s$' "$OUT/train_$n.log")"
      else echo "$n: $( [ -f "$w/logs/$n.failed" ] && echo FAILED || echo running)"; tail -3 "$OUT/train_$n.log"; fi
    done ;;
  bench)
    base=$1 questions=$2 tag=$3 NLL_MODEL=${NLL_MODEL-qwen2.5-coder-1.5b}  # NLL_MODEL= : no NLL
    out=$w/bench/$tag resume=() dir=$m models=(--model "aspd-$base" --baseline "seq-$base")
    if [ -n "${RUNS:-}" ]; then  # RUNS="5a=/root/work5a 5b=/root/work5b": every run's pair in one process
      dir=$w/runs models=(); mkdir -p "$dir"
      for r in $RUNS; do
        for v in aspd seq; do ln -sfn "${r#*=}/m/$v-$base" "$dir/$v-${r%%=*}"; done
        models+=(--model "aspd-${r%%=*}" --baseline "seq-${r%%=*}")
      done
    fi
    [ -f "$out/rows.partial.jsonl" ] && resume=(--resume)
    rc=0
    (cd "$dir" && timeout "${BUDGET_S:-560}" python3 -m aspd.cli bench speed "${models[@]}" \
      --bench "$OLDPWD/$questions" ${LIMIT:+--limit $LIMIT} --paper-sampling \
      --repetition-penalty 1.05 --max-new-tokens 512 ${NLL_MODEL:+--nll-model $NLL_MODEL} --out "$out" "${resume[@]}" \
      2>&1 | quiet | grep -v "^\[" ) || rc=$?
    mkdir -p "$OUT/$tag" && cp -r "$out/." "$OUT/$tag/"
    exit "$rc" ;;
  pairwise)
    tag=$1 key=${3:-$2}  # KEY: a run of RUNS (labels aspd-KEY, seq-KEY)
    aspd bench pairwise --answers "$w/bench/$tag/results.json" --judge-model qwen2.5-coder-1.5b --dtype bfloat16 \
      --model "aspd-$key" --baseline "seq-$key" --bench-dir .xfer/data/bench 2>&1 | quiet | grep -v "^\[pairwise\]"
    mkdir -p "$OUT/$tag" && cp "$w/bench/$tag"/pairwise_*.json "$OUT/$tag/" ;;
  place)
    base=$1; shift; mkdir -p "$w/art"
    for t in "$@"; do
      n=$(tar -tf "$t" | sed -n 1p | cut -d/ -f1); tar -C "$w/art" -xf "$t"; rm -rf "${m:?}/$n"
      python3 -c "import sys; from pathlib import Path; from aspd.models.derived import build
print(build(sys.argv[1], Path(sys.argv[2]), base_folder=Path(sys.argv[3]), dtype='bfloat16'))" \
        "$w/art/$n" "$m/$n" "$ASPD_CACHE/models/$base" 2>&1 | quiet | grep -v -E "^(Loading|Writing)" || true
    done ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
