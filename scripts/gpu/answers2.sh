#!/usr/bin/env bash
# Issue 17 on both GPUs: the teacher answers the prompts still unanswered, one half per GPU; then GPU 0 replies to
# the last lease's open span requests (prev/span_req.jsonl.gz). Start with bg.sh once the teacher's GGUF is received
# and /root/models/qwen2.5-coder-1.5b.ok exists; outputs go to $OUT.
set -uo pipefail
w=${W:-/root/work} g=scripts/gpu
export PYTHONPATH=$PWD/src:/tmp/site ASPD_CACHE=${ASPD_CACHE:-/root/cache} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
until [ -f /root/models/qwen2.5-coder-1.5b.ok ]; do sleep 3; done
CUDA_VISIBLE_DEVICES=0 bash $g/stage_data.sh setup
python3 - "$w" <<'EOF'
import json, sys
w = sys.argv[1]
done = {json.loads(line)["id"] for f in ("answers.jsonl", "answers.jsonl.dropped.jsonl") for line in open(f"{w}/{f}")}
todo = [line for line in open(f"{w}/prompts.jsonl") if json.loads(line)["id"] not in done]
for k in (0, 1):
    open(f"{w}/todo{k}.jsonl", "w").writelines(todo[k::2])
print(len(todo), "prompts to answer")
EOF
quiet() { tr '\r' '\n' | grep -v -E "it/s\]|s/it\]|^\s*$" | tail -3; }
answer() {
  CUDA_VISIBLE_DEVICES=$1 python3 -m aspd.cli distill --resume --model qwen2.5-coder-1.5b --prompts "$w/todo$1.jsonl" \
    --output "$w/new$1.jsonl" --parallel-style --engine pad --batch-size 1024 --max-new-tokens 640 --temperature 0.7 \
    --top-k 20 --top-p 0.8 --repetition-penalty 1.05 --seed "$1" --time-budget "${ANSWER_S:-330}" 2>&1 | quiet
  gzip -c "$w/new$1.jsonl" > "$OUT/answers_new$1.jsonl.gz"
  gzip -c "$w/new$1.jsonl.dropped.jsonl" > "$OUT/answers_new$1_dropped.jsonl.gz"
  cp "$w/new$1.jsonl.meta.json" "$OUT/answers_new$1.meta.json"
}
spans_prev() {
  gzip -dc "$w/in/prev/span_req.jsonl.gz" > "$w/span_req_prev.jsonl"
  CUDA_VISIBLE_DEVICES=0 python3 -m aspd.cli distill --resume --model qwen2.5-coder-1.5b --prompts "$w/span_req_prev.jsonl" \
    --output "$w/span_rep_prev.jsonl" --keep-bad --engine pad --batch-size 512 --max-new-tokens 400 --temperature 0 \
    --time-budget "${SPAN_S:-160}" 2>&1 | quiet
  gzip -c "$w/span_rep_prev.jsonl" > "$OUT/span_replies_prev.jsonl.gz"
}
(answer 0; spans_prev) & answer 1 & wait
