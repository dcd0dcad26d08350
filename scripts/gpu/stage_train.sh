#!/usr/bin/env bash
# GPU stage 3 of the recipe: the ASPD model and its Seq baseline, LoRA, same samples and settings; both packed into
# derived-model artifacts. Needs stage_transform.sh's output on the same machine.
# Usage: bash scripts/gpu/stage_train.sh NAME RANK EPOCHS SERIAL_SHARE LR [full]
#   full: also a full fine-tune of the ASPD variant, for its loss curve only (too big to ship).
#   Environment: VARIANTS (default "aspd seq"; "pasta" trains the PASTA-LANG model from the same samples, its
#   markup converted from ASPD's), PRECISION (default bf16).
# Writes $OUT/{aspd,seq}-NAME.tar (artifact folders with loss_history.json), $OUT/train_NAME.log and, with full,
# $OUT/full-aspd-NAME.loss.json.
set -euo pipefail
name=$1 rank=$2 epochs=$3 share=$4 lr=$5 full=${6:-}
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 ASPD_CACHE=/root/cache
w=/root/work
python3 -m pip install -q --no-index --no-deps --target /tmp/site .xfer/whl/*.whl 2>/dev/null || true
[ -d "$ASPD_CACHE/models/$name" ] || python3 -m aspd.cli models fetch "$name" --gguf "/root/models/$name.gguf" -q
mkdir -p "$w"
# A fresh machine: take the transform output that came back from stage_transform.sh (carried in .xfer/data).
[ -f "$w/${name}_t.jsonl" ] || gunzip -c ".xfer/data/transform_$name.jsonl.gz" > "$w/${name}_t.jsonl"
python3 -m aspd.cli transform --to-train "$w/${name}_t.jsonl" --aspd "$w/${name}_train.jsonl" --serial-share "$share"
common=(--model "$name" --data "$w/${name}_train.jsonl" --epochs "$epochs" --batch-size 8 --max-length 1536
        --precision "${PRECISION:-bf16}" --logging-steps 5 --save-steps 100000 --seed 0)
lora=(--lora --lora-r "$rank" --lora-alpha $((2 * rank)) --lora-dropout 0.05 --lr "$lr")
{
  for v in ${VARIANTS:-aspd seq}; do
    flag=(); [ "$v" = seq ] && flag=(--serial); [ "$v" = pasta ] && flag=(--format pasta)
    rm -rf "$w/$v-$name"
    /usr/bin/time -f "$v-$name: %e s" python3 -m aspd.cli train "${common[@]}" "${lora[@]}" "${flag[@]}" --output "$w/$v-$name"
    python3 -m aspd.cli models pack "$w/$v-$name" "$w/art/$v-$name" --base "$name"
    tar -C "$w/art" -cf "$OUT/$v-$name.tar" "$v-$name"
  done
  if [ -n "$full" ]; then
    /usr/bin/time -f "full-aspd-$name: %e s" python3 -m aspd.cli train "${common[@]}" --lr 5e-5 --output "$w/full-aspd-$name"
    cp "$w/full-aspd-$name/loss_history.json" "$OUT/full-aspd-$name.loss.json"
  fi
  [ -d "$w/aspd-$name" ] && python3 scripts/gpu/quick_ppd.py "$w/aspd-$name" .xfer/data/vicuna_bench.jsonl 12
  if [ -d "$w/pasta-$name" ]; then  # a first look: does it write async spans by itself?
    for q in "Give me three tips for staying healthy." "List the main differences between cats and dogs."; do
      python3 -m aspd.cli generate --model "$w/pasta-$name" --mode pasta --json --paper-sampling --max-new-tokens 256 "$q"
    done
  fi
} 2>&1 | tr '\r' '\n' | grep -v -E "it/s\]|s/it\]|^\s*$" | tee "$OUT/train_$name.log"
