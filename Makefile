# Thin targets over `python -m ...`; every target installs what it needs first.
.DEFAULT_GOAL := help
.PHONY: help install run test lint bench chaos up down migrate clean

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

help:
	@echo "make run     install, then start the whole stack locally (Ctrl-C stops it)"
	@echo "make test    install, then run the test suite against real servers"
	@echo "make lint    ruff + mypy"
	@echo "make bench   print the benchmark table"
	@echo "make chaos   the fault soak: 1,000 generations under faults, then the balance (GENERATIONS=, SEED=)"
	@echo "make up/down docker compose up (with the simulator unless SKYTELLS_API_KEY is set) / down"
	@echo "make migrate apply database migrations to DATABASE_URL"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(PY) -m devstack

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: install
	$(PY) -m bench

GENERATIONS ?= 1000
SEED ?= 1
chaos: install
	$(PY) -m chaos --generations $(GENERATIONS) --seed $(SEED)

migrate: install
	$(PY) -m common.migrate

# Without a Skytells key, compose runs the simulator too (the `sim` profile), as `make run` does.
COMPOSE_PROFILE = $(if $(SKYTELLS_API_KEY),,--profile sim)

up:
	docker compose $(COMPOSE_PROFILE) up -d --build

down:
	docker compose --profile sim down

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
