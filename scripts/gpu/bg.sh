#!/usr/bin/env bash
# Background jobs on the GPU machine that outlive the device call that starts them (the machine stays warm only
# while calls follow each other, so keep calling `peek`).
# Usage (device run):
#   bash scripts/gpu/bg.sh start NAME GPU 'COMMAND'   run COMMAND on GPU (CUDA_VISIBLE_DEVICES) with OUT=$W/out/NAME
#   bash scripts/gpu/bg.sh peek [SECONDS [NAME...]]   wait up to SECONDS for the NAMEd jobs (default: all) to end,
#                                                     then show each job's state and log tail (logs -> $OUT)
#   bash scripts/gpu/bg.sh collect [FIRST [LAST]]     every job's $OUT (and $W/bench, benches cut short included) as
#                                                     tar parts of 15 MB (cat them back together)
set -euo pipefail
w=${W:-/root/work}
mkdir -p "$w/bg" "$w/out"
state() { [ -f "$w/bg/$1.done" ] && echo done || { [ -f "$w/bg/$1.failed" ] && echo FAILED || echo running; }; }
case "$1" in
  start)
    name=$2 gpu=$3 cmd=$4
    rm -f "$w/bg/$name".{done,failed}
    mkdir -p "$w/out/$name"
    CUDA_VISIBLE_DEVICES=$gpu OUT=$w/out/$name setsid nohup bash -c "( $cmd ) && touch $w/bg/$name.done \
      || touch $w/bg/$name.failed" > "$w/bg/$name.log" 2>&1 < /dev/null &
    sleep 5; tail -n 3 "$w/bg/$name.log" ;;
  peek)
    budget=${2:-0}; shift $(( $# < 2 ? $# : 2 ))
    names=("$@"); [ ${#names[@]} -gt 0 ] || names=($(cd "$w/bg" && ls *.log 2>/dev/null | sed 's/\.log$//'))
    t0=$(date +%s)
    while :; do
      running=0
      for n in "${names[@]}"; do [ "$(state "$n")" = running ] && running=$((running + 1)); done
      [ "$running" = 0 ] || [ $(( $(date +%s) - t0 )) -ge "$budget" ] && break
      sleep 5
    done
    for n in "${names[@]}"; do
      echo "== $n: $(state "$n")"
      tr '\r' '\n' < "$w/bg/$n.log" | grep -v -E "it/s\]|s/it\]|^\s*$" | tail -n "${TAIL:-6}" || true
    done
    cp "$w"/bg/*.log "$OUT/" 2>/dev/null || true
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null || true ;;
  collect)
    # $OUT brings back at most 8 files of 16 MiB: the jobs' outputs travel as one tar in 15 MB parts, FIRST..LAST
    # per call (numbered from 0; the tar is made on the first call and kept: `rm $w/collect*` to make it anew).
    first=${2:-0} last=${3:-3}
    [ -f "$w/collect.tar" ] || { tar -C "$w" -cf "$w/collect.tar" out bg $(cd "$w" && ls -d bench 2>/dev/null); \
      split -b 15000000 -d -a 2 "$w/collect.tar" "$w/collect.part"; }
    ls "$w"/collect.part* | wc -l | xargs echo "parts:"
    for i in $(seq "$first" "$last"); do f=$w/collect.part$(printf %02d "$i"); [ -f "$f" ] && cp "$f" "$OUT/"; done
    true ;;
  *) echo "usage: $0 start NAME GPU CMD | peek [SECONDS [NAME...]] | collect [FIRST [LAST]]" >&2; exit 2 ;;
esac
