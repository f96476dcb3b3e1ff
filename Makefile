# iogate developer commands. `make test` is the one test command (CI calls it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-quick bench-tools clean soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# make run PORT=9000 (and/or IOGATE_CONFIG=iogate.toml)
run: $(STAMP)
	$(BIN)/iogate serve $(if $(IOGATE_CONFIG),--config $(IOGATE_CONFIG),) $(if $(PORT),--port $(PORT),)

LINT_DIRS := $(wildcard src tests bench examples)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/mypy --strict src
	$(BIN)/mypy --strict tests/typing
	PYTHONPATH=src $(BIN)/lint-imports

test: lint
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) || true
	$(BIN)/pytest $(PYTEST_ARGS)

# The soak of tests/faults/test_soak.py for longer than the 60 s it runs in `make test`.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest tests/faults/test_soak.py -s $(PYTEST_ARGS)

# wrk (Debian package) drives the gateway benchmark; skipped with a note if it cannot be installed.
bench-tools:
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) || true
	command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind) || true

bench: $(STAMP) bench-tools
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP) bench-tools
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
