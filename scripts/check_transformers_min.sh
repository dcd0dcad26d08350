#!/usr/bin/env bash
# The engine tests under the oldest transformers the project supports (pyproject: transformers>=5.17; the GPU
# machine runs 5.17), in a throwaway venv that takes every other package from the current environment.
#
#   scripts/check_transformers_min.sh [VERSION] [LOG]     (defaults: 5.17.* and docs/results/transformers_min.log)
#   PYTHON=/path/to/python scripts/check_transformers_min.sh   (the environment to reuse; default: python)
set -euo pipefail
version=${1:-5.17.*}
log=${2:-docs/results/transformers_min.log}
py=${PYTHON:-python}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m venv --system-site-packages "$tmp/venv"
# --system-site-packages reaches the base interpreter's packages only; when $py is itself a venv, its
# site-packages come too, after the new venv's own (so the pinned transformers is the one imported).
parent=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
own=$("$tmp/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
[ "$parent" = "$own" ] || echo "$parent" > "$own/zz_parent_env.pth"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "transformers==$version"
cd "$root"
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm), $(nproc) cores"
  echo "# command: scripts/check_transformers_min.sh $*"
  "$tmp/venv/bin/python" -c "import sys, torch, transformers
print('# python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__,
      'from', transformers.__file__)"
  PYTHONPATH="$root/src" "$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_engine.py \
    tests/test_engine_fast.py tests/test_engine_fuzz.py tests/test_engine_pasta.py
} 2>&1 | tee "$log"
