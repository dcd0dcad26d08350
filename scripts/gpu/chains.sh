#!/usr/bin/env bash
# The background chains of a two-GPU lease for issues 17-20, one per GPU, each a sequence of stage scripts that
# goes on when a part fails. Start them with bg.sh once the GGUFs are received (smollm2-135m and
# qwen2.5-coder-1.5b for `flagship`, qwen2.5-coder-0.5b too for `engine`), then keep calling `bg.sh peek`:
#   bash scripts/gpu/bg.sh start flagship 0 'bash scripts/gpu/chains.sh flagship'
#   bash scripts/gpu/bg.sh start engine 1 'bash scripts/gpu/chains.sh engine'
# flagship: convert the bases and build the training set; train the 1.5B pair and bench it on Vicuna-80; bench the
#           SmolLM2 pair once the other chain has trained it; the pairwise judge; the 1.5B on RAG-50 and MT-Bench.
# engine:   (after flagship has converted) the last synth prompts; the SmolLM2 pair (it ran out of memory beside
#           the two 1.5B runs); the compiled step (stage_compile.sh) and the load test (stage_load.sh) on an
#           otherwise idle GPU; then the 0.5B pair and its Vicuna-80 bench.
# The fourth lease measured what changed in the engines, with the shipped pairs carried as artifacts (no training);
# its other chain ran stage_compile.sh and stage_load.sh (at 12e2fe3, with the packed attention since removed).
# rebench: the shipped pairs on Vicuna-80, NLL under the 1.5B, the pairwise and the single-answer judges
#          (stage_judge.sh: carry .xfer/srv too).
# measure: (one GPU, nothing beside it: benches on a host busy with another chain's compiling are not comparable)
#          the shipped 0.5B and SmolLM2 pairs on Vicuna-80 on aspd.attention.decode_attention (no NLL: the 1.5B
#          is not received); stage_compile.sh for both (the 16-branch step, the fp32 check on the GPU); the load
#          test. ~30 min in all: it fills a lease (the first bench compiles every bucket and span cold, >5 min).
#          Carry the four adapters (src/aspd/models/artifacts/*-{smollm2-135m,qwen2.5-coder-0.5b}) in a call of
#          their own.
# serve:   (GPU 0 of two; receive smollm2-135m, then qwen2.5-coder-0.5b and -1.5b; `touch /root/models/NAME.ok`
#          once a GGUF's sha256 is checked) stage_compile.sh for SmolLM2 (issue 19's last figure); the load test on
#          the cache read by spans (issue 20). Beside it, answers2.sh (both GPUs, once the 1.5B is received):
#          the teacher's answers to the prompts still unanswered and its replies to the open span requests.
# retrain + flagship2: (two GPUs; receive the three bases, 0.5B first; carry .xfer/data with teacher/ = data/teacher
#          as of the seventh lease, 18,664 samples, 35% parallel) issue 18's pairs on the new data.
#   retrain (GPU 0): as each base is received, convert it and train its pair (0.5B first: its setup builds the
#          training set; SmolLM2 beside it); then bench each on Vicuna-80 (NLL under the 1.5B), 0.5B first.
#   flagship2 (GPU 1): once the training set is built and the 1.5B received, the 1.5B pair (EPOCHS15, default 1:
#          the set is twice the last one), its Vicuna-80 bench and the pairwise judge.
# SERIAL_SHARE / MIN_LAYOUT choose the training set (stage_models.sh setup); defaults 0.2 and 1.5.
set -uo pipefail
w=${W:-/root/work}
g=scripts/gpu
export PYTHONPATH=$PWD/src:/tmp/site ASPD_CACHE=${ASPD_CACHE:-/root/cache}
export SERIAL_SHARE=${SERIAL_SHARE:-0.2} MIN_LAYOUT=${MIN_LAYOUT:-1.5}
mkdir -p "$OUT"/{train,synth,compile,load}
run() { echo "== $(date +%T) $*"; "$@" || echo "!! exit $?: $*"; }
bases() {  # the wheels installed, the received bases converted
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl 2>/dev/null || true
  for b in "$@"; do run python3 -m aspd.cli models fetch "$b" --gguf "/root/models/$b.gguf" -q; done
}
ok() { until [ -f "/root/models/$1.ok" ]; do sleep 5; done; }  # a received GGUF, its sha256 checked
bench() {  # BASE QUESTIONS TAG SECONDS [LIMIT]
  BUDGET_S=$4 LIMIT=${5:-} run bash $g/stage_models.sh bench "$1" ".xfer/data/bench/$2" "$3"
}
case "$1" in
  flagship)
    run bash $g/stage_models.sh setup qwen2.5-coder-1.5b smollm2-135m
    touch "$w/converted"
    run bash $g/stage_models.sh train qwen2.5-coder-1.5b 8 2 2e-4
    OUT=$OUT/train run bash $g/stage_models.sh wait 1500 qwen2.5-coder-1.5b
    bench qwen2.5-coder-1.5b vicuna_bench.jsonl vicuna80_15 420
    OUT=$OUT/train run bash $g/stage_models.sh wait 900 smollm2-135m
    bench smollm2-135m vicuna_bench.jsonl vicuna80_smol 300
    run bash $g/stage_models.sh pairwise vicuna80_15 qwen2.5-coder-1.5b
    bench qwen2.5-coder-1.5b rag_bench.jsonl rag50_15 360 50
    bench qwen2.5-coder-1.5b mt_bench.jsonl mt80_15 900 ;;
  engine)
    until [ -f "$w/converted" ]; do sleep 5; done
    run bash $g/stage_data.sh setup
    OUT=$OUT/synth run bash $g/stage_data.sh synth 45
    run bash $g/stage_models.sh train smollm2-135m 16 2 5e-4
    OUT=$OUT/train run bash $g/stage_models.sh wait 600 smollm2-135m
    OUT=$OUT/compile run bash $g/stage_compile.sh 480
    ASPD_COMPILE=0 OUT=$OUT/load run bash $g/stage_load.sh
    run bash $g/stage_models.sh setup qwen2.5-coder-0.5b
    run bash $g/stage_models.sh train qwen2.5-coder-0.5b 8 2 2e-4
    OUT=$OUT/train run bash $g/stage_models.sh wait 900 qwen2.5-coder-0.5b
    bench qwen2.5-coder-0.5b vicuna_bench.jsonl vicuna80_05 300 ;;
  rebench)
    bases qwen2.5-coder-1.5b qwen2.5-coder-0.5b smollm2-135m
    for b in qwen2.5-coder-1.5b qwen2.5-coder-0.5b smollm2-135m; do
      bench $b vicuna_bench.jsonl vicuna80_$b 420
      run bash $g/stage_models.sh pairwise vicuna80_$b $b
    done
    ASPD_COMPILE=0 CONCURRENCY=16 OUT=$OUT/judge run bash $g/stage_judge.sh qwen2.5-coder-1.5b "$w/bench" \
      .xfer/data/bench vicuna80_qwen2.5-coder-1.5b vicuna80_qwen2.5-coder-0.5b vicuna80_smollm2-135m ;;
  measure)
    bases qwen2.5-coder-0.5b smollm2-135m
    NLL_MODEL= bench qwen2.5-coder-0.5b vicuna_bench.jsonl vicuna80_qwen2.5-coder-0.5b 600
    NLL_MODEL= bench smollm2-135m vicuna_bench.jsonl vicuna80_smollm2-135m 480
    ENGINES=fast-compiled SPEED_S=240 MODELS="qwen2.5-coder-0.5b smollm2-135m" \
      OUT=$OUT/compile run bash $g/stage_compile.sh 600
    ASPD_COMPILE=0 OUT=$OUT/load run bash $g/stage_load.sh ;;
  serve)
    bases smollm2-135m
    ENGINES=fast-compiled SPEED_S=300 MODELS=smollm2-135m OUT=$OUT/compile run bash $g/stage_compile.sh 420
    ok qwen2.5-coder-0.5b
    bases qwen2.5-coder-0.5b
    ASPD_COMPILE=0 OUT=$OUT/load run bash $g/stage_load.sh ;;
  retrain)
    ok qwen2.5-coder-0.5b
    run bash $g/stage_models.sh setup qwen2.5-coder-0.5b
    touch "$w/converted"
    run bash $g/stage_models.sh train qwen2.5-coder-0.5b 8 "${EPOCHS05:-2}" 2e-4
    ok smollm2-135m
    run bash $g/stage_models.sh setup smollm2-135m
    run bash $g/stage_models.sh train smollm2-135m 16 2 5e-4
    OUT=$OUT/train run bash $g/stage_models.sh wait 900 qwen2.5-coder-0.5b
    bench qwen2.5-coder-0.5b vicuna_bench.jsonl vicuna80_qwen2.5-coder-0.5b 600
    OUT=$OUT/train run bash $g/stage_models.sh wait 600 smollm2-135m
    bench smollm2-135m vicuna_bench.jsonl vicuna80_smollm2-135m 480
    for b in qwen2.5-coder-0.5b smollm2-135m; do run bash $g/stage_models.sh pairwise vicuna80_$b $b; done ;;
  flagship2)
    until [ -f "$w/converted" ]; do sleep 5; done
    ok qwen2.5-coder-1.5b
    run bash $g/stage_models.sh setup qwen2.5-coder-1.5b
    run bash $g/stage_models.sh train qwen2.5-coder-1.5b 8 "${EPOCHS15:-1}" 2e-4
    OUT=$OUT/train run bash $g/stage_models.sh wait 1200 qwen2.5-coder-1.5b
    bench qwen2.5-coder-1.5b vicuna_bench.jsonl vicuna80_qwen2.5-coder-1.5b 720
    run bash $g/stage_models.sh pairwise vicuna80_qwen2.5-coder-1.5b qwen2.5-coder-1.5b ;;
  *) echo "usage: $0 flagship|engine|rebench|measure|serve|retrain|flagship2" >&2; exit 2 ;;
esac
