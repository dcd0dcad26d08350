#!/usr/bin/env bash
# GPU: issue 17's training data on one machine, in calls of at most ten minutes. Every step resumes where the last
# call stopped, keeps its state in /root/work and copies what it has so far to $OUT.
# Usage (device run, carry .xfer/whl and .xfer/data): bash scripts/gpu/stage_data.sh STEP [SECONDS]
#   setup      install the carried wheels; convert the received teacher GGUF (and JUDGE's, if set; stage_receive.sh)
#   synth      the teacher writes one user question per request (synth_requests.jsonl.gz); then
#              collect, merge with the shared and imported prompts (exact and near duplicates out), decontaminate
#              against every bench question -> /root/work/prompts.jsonl
#   answers    the teacher answers every prompt under the parallel-style system prompt (not part of the sample);
#              answers cut by the limit or looping go to the dropped file
#   spans      span requests for the answers, the teacher's span replies (greedy)
#   transform  rules + span replies as candidates, cheap checks, the likelihood judge under the target model
# .xfer/data (carried once, with setup) holds train_prompts.jsonl (the shared prompts), synth_requests.jsonl.gz and
# chatterbot_prompts.jsonl.gz (data/prompts/) and bench/ (vicuna, mt_bench, rag_bench); setup copies it to
# /root/work/in; .xfer/data/prev/{synth_answered,answers,answers_dropped,prompts}.jsonl.gz, if carried, are the last
# lease's state for --resume (prompts: its merged prompt set, so that `answers` needs no `synth` first). LIMIT=N
# answers only N requests per step (a dry run). ENGINE (default pad: left-padded batches, twice the rate of aspd's
# own batching on these short replies to long requests, measured) and BATCH (default 1,024 rows) choose how distill
# batches.
set -euo pipefail
step=$1 budget=${2:-540}
teacher=${TEACHER:-qwen2.5-coder-1.5b} judge=${JUDGE:-smollm2-135m}
export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 ASPD_CACHE=${ASPD_CACHE:-/root/cache} TOKENIZERS_PARALLELISM=false
w=${W:-/root/work}
mkdir -p "$w"
x=$w/in
lim=(${LIMIT:+--limit $LIMIT})
eng=(--engine "${ENGINE:-pad}" --batch-size "${BATCH:-1024}")
aspd() { python3 -m aspd.cli "$@"; }
quiet() { tr '\r' '\n' | grep -v -E "it/s\]|s/it\]|^\s*$" | tail -"${1:-6}"; }
case "$step" in
setup)
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl
  mkdir -p $x && cp -r .xfer/data/. $x/
  prev=$x/prev  # the last lease's outputs, so that --resume skips what was answered then
  [ -s $w/synth_answered.jsonl ] || [ ! -f $prev/synth_answered.jsonl.gz ] || gzip -dc $prev/synth_answered.jsonl.gz > $w/synth_answered.jsonl
  [ -s $w/answers.jsonl ] || [ ! -f $prev/answers.jsonl.gz ] || gzip -dc $prev/answers.jsonl.gz > $w/answers.jsonl
  [ -s $w/answers.jsonl.dropped.jsonl ] || [ ! -f $prev/answers_dropped.jsonl.gz ] \
    || gzip -dc $prev/answers_dropped.jsonl.gz > $w/answers.jsonl.dropped.jsonl
  [ -s $w/prompts.jsonl ] || [ ! -f $prev/prompts.jsonl.gz ] || gzip -dc $prev/prompts.jsonl.gz > $w/prompts.jsonl
  for m in "$teacher" ${JUDGE:+"$judge"}; do
    [ -d "$ASPD_CACHE/models/$m" ] || aspd models fetch "$m" --gguf "/root/models/$m.gguf" --dtype bfloat16 -q
  done
  nvidia-smi --query-gpu=name,memory.used --format=csv,noheader || true ;;
synth)
  [ -s $w/synth_requests.jsonl ] || gzip -dc $x/synth_requests.jsonl.gz > $w/synth_requests.jsonl
  touch $w/synth_answered.jsonl
  aspd distill --resume --model "$teacher" --prompts $w/synth_requests.jsonl --output $w/synth_answered.jsonl "${lim[@]}" "${eng[@]}" \
    --max-new-tokens 320 --temperature 0.8 --top-k 50 --top-p 0.9 --seed 0 --time-budget "$budget" 2>&1 | quiet 3
  aspd prompts collect --input $w/synth_answered.jsonl --output $w/synth_prompts.jsonl \
    --report "$OUT/prompts_collect.json" | tail -2
  aspd prompts merge --input $x/train_prompts.jsonl --input $x/chatterbot_prompts.jsonl.gz \
    --input $w/synth_prompts.jsonl --output $w/merged.jsonl --report "$OUT/prompts_merge.json" | tail -2
  aspd prompts decontaminate --input $w/merged.jsonl --bench-dir $x/bench --output $w/prompts.jsonl \
    --report "$OUT/prompts_decontam.json" | tail -2
  wc -l $w/synth_answered.jsonl $w/prompts.jsonl
  gzip -c $w/synth_answered.jsonl > "$OUT/synth_answered.jsonl.gz"
  gzip -c $w/prompts.jsonl > "$OUT/prompts.jsonl.gz" ;;
answers)
  # PROMPTS, ANSWERS and SEED: another prompt file, output and seed (answers2.sh gives each GPU a half).
  prompts=${PROMPTS:-$w/prompts.jsonl} ans=${ANSWERS:-$w/answers.jsonl}
  touch "$ans"
  aspd distill --resume --model "$teacher" --prompts "$prompts" --output "$ans" --parallel-style "${lim[@]}" "${eng[@]}" \
    --max-new-tokens 640 --temperature 0.7 --top-k 20 --top-p 0.8 --repetition-penalty 1.05 --seed "${SEED:-0}" \
    --time-budget "$budget" 2>&1 | quiet 3
  wc -l "$prompts" "$ans" "$ans.dropped.jsonl"
  gzip -c "$ans" > "$OUT/answers.jsonl.gz"
  gzip -c "$ans.dropped.jsonl" > "$OUT/answers_dropped.jsonl.gz"
  cp "$ans.meta.json" "$OUT/answers.meta.json" ;;
spans)
  # SPAN_REQ, SPAN_REP: an existing request file to answer (answers2.sh: the last lease's open requests) and the
  # replies' file. Without one, requests are made here: only for answers the rules find no group in (the others
  # keep their rule candidates), and not for the last lease's answers, which were asked about then.
  req=${SPAN_REQ:-$w/span_req.jsonl} rep=${SPAN_REP:-$w/span_rep.jsonl}
  if [ ! -s "$req" ]; then
    python3 -c "
import gzip, json, os, sys
from aspd.pipeline.rules import RuleRewriter
rules = RuleRewriter()
old = set()
if os.path.exists(sys.argv[3]):
    old = {json.loads(line)['id'] for line in gzip.open(sys.argv[3], 'rt')}
with open(sys.argv[1]) as f, open(sys.argv[2], 'w') as out:
    for line in f:
        obj = json.loads(line)
        if obj['id'] not in old and not any(c.has_parallel for c in rules.candidates(obj['answer'], 4)):
            out.write(line)" $w/answers.jsonl $w/prose.jsonl $x/prev/answers.jsonl.gz
    aspd transform --input $w/prose.jsonl --span-requests "$req" | tail -2
  fi
  touch "$rep"
  aspd distill --resume --model "$teacher" --prompts "$req" --output "$rep" --keep-bad "${lim[@]}" "${eng[@]}" \
    --max-new-tokens 400 --temperature 0 --time-budget "$budget" 2>&1 | quiet 3
  wc -l "$req" "$rep"
  gzip -c "$rep" > "$OUT/span_replies.jsonl.gz" ;;
transform)
  aspd transform --resume --no-progress --input $w/answers.jsonl --output $w/transform.jsonl \
    --rewriter spans --span-replies $w/span_rep.jsonl --judge likelihood --target-model "$judge" --device cuda \
    --dtype float32 2>&1 | tail -3 &
  pid=$!
  ( sleep "$budget"; kill $pid 2>/dev/null ) & wait $pid || true
  wc -l $w/transform.jsonl
  gzip -c $w/transform.jsonl > "$OUT/transform.jsonl.gz"
  [ ! -f $w/transform.jsonl.summary.json ] || cp $w/transform.jsonl.summary.json "$OUT/transform.summary.json" ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac
