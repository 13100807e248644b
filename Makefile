# Thin targets over `python -m ...`; every target installs what it needs first.
.DEFAULT_GOAL := help
.PHONY: help install run test lint bench up down migrate clean

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

# The page's tests drive Debian's Chromium; Playwright cannot download a browser here, nor does it need to.
CHROMIUM := /usr/bin/chromium

install: $(STAMP) $(CHROMIUM)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is missing (the page's browser tests need it): apt-get install -y chromium" >&2; \
	fi

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

# Without a Skytells key, compose runs the simulator too (the `sim` profile), as `make run` does.
COMPOSE_PROFILE = $(if $(SKYTELLS_API_KEY),,--profile sim)

up:
	docker compose $(COMPOSE_PROFILE) up -d --build

down:
	docker compose --profile sim down

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
