# Two commands on a fresh clone:
#   make run    install the service (no torch) into .venv and serve the bundles in model/
#   make test   install everything (training job too) into .venv and run ruff and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint install install-dev docker-smoke bench-engines clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.service: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[train,dev]"
	touch $@ $(VENV)/.service

install: $(VENV)/.service
install-dev: $(VENV)/.dev

run: $(VENV)/.service
	$(BIN)/python -m service --host $(HOST) --port $(PORT) --model-dir model

lint: $(VENV)/.dev
	$(BIN)/ruff check service training tests benchmarks
	$(BIN)/ruff format --check service training tests benchmarks
	$(BIN)/mypy service

test: $(VENV)/.dev lint
	$(BIN)/python -m pytest

# Our served engine against CTranslate2 on the shipped weights, greedy and beam 4, batch 1 and 32, each
# engine on 1 and 2 threads and 1 and 2 parallel parts (its best counts), our fp32 graphs as the BLEU
# reference; rows in $(ENGINES_OUT). About 30 minutes on 2 cores.
ENGINES_OUT ?= benchmarks/results/engines-bundle.json
bench-engines: $(VENV)/.dev
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks.engines --bundle model/multi --direction de-en --limit 300 --beam 1 4 \
		--batch 1 32 --engines served ort-fp32 ct2 --threads 1 --ort-threads 1 2 --ct2-threads 1 2 --workers 1 2 \
		--repeats 1 --rounds 2 --out $(ENGINES_OUT)

docker-smoke:
	../shared/tools/docker-smoke --path /ready --then deploy/container-checks.sh .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
