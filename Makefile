# Thin targets over `python -m ...`; every target installs what it needs first.
.DEFAULT_GOAL := help
.PHONY: help install lock run test lint bench chaos chaos-cluster up down compose-check migrate redrive clean

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

help:
	@echo "make run     install, then start the whole stack locally, data kept in .devstack/ (Ctrl-C stops it)"
	@echo "make test    install, then run the test suite against real servers"
	@echo "make lint    ruff + mypy"
	@echo "make bench   print the benchmark table"
	@echo "make chaos   the fault soak: 1,000 generations under faults, then the balance (GENERATIONS=, SEED=)"
	@echo "make chaos-cluster  the same on a 3-node RabbitMQ cluster and a PostgreSQL primary with a synchronous standby"
	@echo "make up/down docker compose up (writing .env with random secrets on first use) / down (ARGS=-v drops the data)"
	@echo "make compose-check  docker-compose.yml run for real on podman: up, a generation, scaled, a persister killed, down"
	@echo "make migrate apply database migrations to DATABASE_URL"
	@echo "make lock    refresh requirements*.lock from pyproject.toml (ARGS=--upgrade moves every pin)"
	@echo "make redrive the dead-letter queue at AMQP_URL: REDRIVE=list (default), REDRIVE='move --all', REDRIVE='discard ID...'"

# The page's tests drive Debian's Chromium; Playwright cannot download a browser here, nor does it need to.
CHROMIUM := /usr/bin/chromium

install: $(STAMP) $(CHROMIUM)

# Every package comes from the hashed lock; the project itself is installed without fetching anything, so a
# dependency pyproject.toml names but the lock lacks stops here instead of being resolved anew.
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-index --no-build-isolation -e '.[dev]' \
		|| { echo "pyproject.toml needs a package requirements-dev.lock lacks: run make lock" >&2; exit 1; }
	touch $(STAMP)

# Pins stay where they are unless ARGS says otherwise (ARGS=--upgrade, or ARGS="-P aiohttp" for one package).
# The runtime lock (the Docker image's) is the dev lock's subset, so both pin the same versions.
UV := $(VENV)/bin/uv
BUILD_REQUIRES = $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
LOCK = $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock"

lock:
	test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet uv; }
	$(BUILD_REQUIRES) | $(LOCK) $(ARGS) pyproject.toml - --extra dev -o requirements-dev.lock
	$(BUILD_REQUIRES) | $(LOCK) pyproject.toml - -c requirements-dev.lock -o requirements.lock

# Data (database, broker, bucket) kept across runs in this folder; `make run DEVSTACK_DATA_DIR=` for a fresh,
# temporary one.
DEVSTACK_DATA_DIR ?= $(CURDIR)/.devstack

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is missing (the page's browser tests need it): apt-get install -y chromium" >&2; \
	fi

run: install
	DEVSTACK_DATA_DIR='$(DEVSTACK_DATA_DIR)' $(PY) -m devstack

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

# Not part of `make test`: forming the cluster and each failover add minutes the test budget does not have.
chaos-cluster: install
	$(PY) -m chaos --rabbitmq-nodes 3 --postgres-standby --generations $(GENERATIONS) --seed $(SEED)

migrate: install
	$(PY) -m common.migrate

# make redrive REDRIVE=list | REDRIVE="move --all" | REDRIVE="move ID..." | REDRIVE="discard ID..." (default: list)
REDRIVE ?= list
redrive: install
	$(PY) -m services.persister redrive $(REDRIVE)

# The Docker CLI's compose plugin where it is there, else Debian's docker-compose (the one the tests render with).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

# .env decides what compose runs (.env.example: the simulator's profile); made once, with random secrets.
up: .env
	$(COMPOSE) up -d --build

.env:
	$(PYTHON) -m devstack.compose_env

# make down ARGS=-v drops the volumes (database, broker, bucket) too. Compose reads the secrets even to stop, and
# refuses without them: with no .env, `make up` has started nothing.
down:
	@if [ -f .env ]; then set -x; $(COMPOSE) --profile sim down $(ARGS); else echo "no .env: make up started nothing"; fi

# Its own time: CI runs it after `make test`. Root on Debian; it installs podman and the rest with apt.
compose-check: install
	$(PY) -m devstack.compose_check

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
