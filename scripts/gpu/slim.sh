#!/usr/bin/env bash
# Keep the working tree that travels to the GPU machine small (the device tool carries at most 64 MiB, model
# chunks included): `on` drops the shipped adapters, benchmark results and data from the index and ignores them
# locally (the files stay on disk); `off` restores both. Never commit while it is on.
# Usage: bash scripts/gpu/slim.sh on|off
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
paths=(src/aspd/models/artifacts benchmarks/results data)
ex=.git/info/exclude
case "${1:-}" in
  on)
    git rm -r -q --cached "${paths[@]}" 2>/dev/null || true
    for p in "${paths[@]}"; do grep -qxF "/$p/" "$ex" || echo "/$p/" >> "$ex"; done ;;
  off)
    for p in "${paths[@]}"; do sed -i "\#^/$p/\$#d" "$ex"; done
    git reset -q -- "${paths[@]}" ;;
  *) echo "usage: $0 on|off" >&2; exit 2 ;;
esac
git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1
