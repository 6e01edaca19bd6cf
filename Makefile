# Two commands on a fresh clone:
#   make run    install the service (no torch) into .venv and serve the bundles in model/
#   make test   install everything (training job too) into .venv and run ruff and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint install install-dev docker-smoke clean

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

docker-smoke:
	../shared/tools/docker-smoke --path /ready --then deploy/container-checks.sh .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
