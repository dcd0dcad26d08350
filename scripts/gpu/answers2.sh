#!/usr/bin/env bash
# Issue 17 on both GPUs: the teacher answers the prompts still unanswered, one half per GPU; then GPU 0 replies to
# the last lease's open span requests (prev/span_req.jsonl.gz). Start with bg.sh once the teacher's GGUF is received
# and /root/models/qwen2.5-coder-1.5b.ok exists; outputs go to $OUT/gpu0, $OUT/gpu1 and $OUT/spans.
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
answer() {  # stage_data.sh's answers step on half $1, on GPU $1, with seed $1
  mkdir -p "$OUT/gpu$1"
  CUDA_VISIBLE_DEVICES=$1 PROMPTS=$w/todo$1.jsonl ANSWERS=$w/new$1.jsonl SEED=$1 OUT=$OUT/gpu$1 \
    bash $g/stage_data.sh answers "${ANSWER_S:-330}"
}
spans_prev() {  # its spans step on the last lease's open requests
  mkdir -p "$OUT/spans"
  gzip -dc "$w/in/prev/span_req.jsonl.gz" > "$w/span_req_prev.jsonl"
  CUDA_VISIBLE_DEVICES=0 BATCH=512 SPAN_REQ=$w/span_req_prev.jsonl SPAN_REP=$w/span_rep_prev.jsonl OUT=$OUT/spans \
    bash $g/stage_data.sh spans "${SPAN_S:-160}"
}
(answer 0; spans_prev) & answer 1 & wait
