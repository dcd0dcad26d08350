#!/usr/bin/env bash
# Append carried chunks of model files to /root/models/NAME on the GPU machine, in the order given.
# Usage (device run, carry the parts): bash scripts/gpu/stage_receive.sh .xfer/PART NAME [.xfer/PART2 NAME2 ...]
set -euo pipefail
mkdir -p /root/models
while [ $# -ge 2 ]; do
  cat "$1" >> "/root/models/$2"
  shift 2
done
ls -la /root/models
