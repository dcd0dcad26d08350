# Two entry points: `make generate` (set up, fetch the default model, answer a prompt) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On machines whose pip finds the local CPU wheel this takes seconds; elsewhere it comes from the normal index.
TORCH_SPEC ?= torch==2.13.0
MODEL ?= aspd-smollm2-135m
PROMPT ?= What are some tips for learning a new language?

.PHONY: setup generate test lint

$(BIN)/aspd: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/aspd

setup: $(BIN)/aspd

generate: setup
	$(BIN)/aspd generate --model $(MODEL) "$(PROMPT)"

test: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
