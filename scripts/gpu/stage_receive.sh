#!/usr/bin/env bash
# Append one carried chunk of a model file to /root/models/NAME on the GPU machine.
# Usage (device run, carry .xfer/PART): bash scripts/gpu/stage_receive.sh .xfer/PART NAME
set -euo pipefail
mkdir -p /root/models
cat "$1" >> "/root/models/$2"
ls -la /root/models
