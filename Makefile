# Thin targets over `python -m ...`; every target installs what it needs first.
.DEFAULT_GOAL := help
.PHONY: help install run test lint bench up down migrate redrive clean

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

help:
	@echo "make run     install, then start the whole stack locally (Ctrl-C stops it)"
	@echo "make test    install, then run the test suite against real servers"
	@echo "make lint    ruff + mypy"
	@echo "make bench   print the benchmark table"
	@echo "make up/down docker compose up (with the simulator unless SKYTELLS_API_KEY is set) / down"
	@echo "make migrate apply database migrations to DATABASE_URL"
	@echo "make redrive the dead-letter queue at AMQP_URL: ARGS=list, ARGS='move --all', ARGS='discard ID...'"

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

migrate: install
	$(PY) -m common.migrate

# make redrive ARGS=list | ARGS="move --all" | ARGS="move ID..." | ARGS="discard ID..." (no ARGS: list)
ARGS ?= list
redrive: install
	$(PY) -m services.persister redrive $(ARGS)

# Without a Skytells key, compose runs the simulator too (the `sim` profile), as `make run` does.
COMPOSE_PROFILE = $(if $(SKYTELLS_API_KEY),,--profile sim)

up:
	docker compose $(COMPOSE_PROFILE) up -d --build

down:
	docker compose --profile sim down

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
