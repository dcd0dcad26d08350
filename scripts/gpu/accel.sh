#!/usr/bin/env bash
# Issue 18: the multi-GPU path for real. The same LoRA fine-tune of qwen2.5-coder-1.5b on the teacher training set,
# STEPS optimizer steps under `accelerate launch` on one GPU, then on two (data parallel: twice the rows per step);
# each log ends with the trainer's samples/s. Needs /root/work/train.jsonl (stage_models.sh setup).
set -uo pipefail
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=${ASPD_CACHE:-/root/cache}
w=${W:-/root/work} steps=${STEPS:-40}
for n in 1 2; do
  multi=(); [ "$n" = 2 ] && multi=(--multi_gpu)
  gpus=0; [ "$n" = 2 ] && gpus=0,1
  CUDA_VISIBLE_DEVICES=$gpus /usr/bin/time -f "gpus=$n wall %e s" accelerate launch --num_processes "$n" "${multi[@]}" \
    --num_machines 1 --mixed_precision no --dynamo_backend no -m aspd.cli train --model qwen2.5-coder-1.5b \
    --data "$w/train.jsonl" --epochs 1 --batch-size 4 --pack --max-length 2048 --precision bf16 --logging-steps 10 \
    --save-steps 100000 --seed 0 --lora --lora-r 8 --lora-alpha 16 --lora-dropout 0.05 --lr 2e-4 --max-steps "$steps" \
    --output "$w/accel$n" 2>&1 | tr '\r' '\n' | grep -v -E "it/s\]|s/it\]|^\s*$" > "$OUT/accel_gpus$n.log"
  tail -n 4 "$OUT/accel_gpus$n.log"
done
