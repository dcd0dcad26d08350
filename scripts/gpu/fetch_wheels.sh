#!/usr/bin/env bash
# Fill .xfer/whl with the wheels the GPU machine lacks (it has torch and transformers, no pip index): gguf for the
# model conversion and pydantic (with its dependencies) for the record models. Every stage script installs
# .xfer/whl/*.whl into /tmp/site, so carry .xfer/whl in the first call of a lease.
# Usage: bash scripts/gpu/fetch_wheels.sh [PYTHON_VERSION, default 3.12]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
py=${1:-3.12}
mkdir -p .xfer/whl
pip=(.venv/bin/pip download -q --only-binary=:all: --python-version "$py" --platform manylinux2014_x86_64
     --platform manylinux_2_17_x86_64 -d .xfer/whl)
# --no-deps: whatever the machine already has (numpy, tqdm, typing_extensions ...) must not be shadowed in /tmp/site.
"${pip[@]}" --no-deps gguf pydantic pydantic-core annotated-types typing-inspection
# .xfer/srv: what `aspd serve` and the OpenAI client need (stage_judge.sh), carried only for the judge.
mkdir -p .xfer/srv
pip=("${pip[@]:0:${#pip[@]}-1}" .xfer/srv)
"${pip[@]}" --no-deps fastapi starlette uvicorn h11 anyio sniffio click annotated-doc opentelemetry-api \
  importlib-metadata zipp httpx httpcore certifi idna openai distro jiter httpx2 httpcore2 truststore
ls .xfer/whl .xfer/srv
