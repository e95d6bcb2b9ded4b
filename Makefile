# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SCENARIO ?= scenarios/log-persist.yaml
WORKERS ?= 4

.PHONY: demo test check fast install bench

$(BIN)/contend: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/contend

# The main job: the log-persistence experiment on the embedded reference server, with its report.
demo: install
	$(BIN)/contend run $(SCENARIO)

# Lint, types, then every test: the fast tier, `integration` (real processes) and `slow` (end to end),
# in WORKERS parallel processes as they mostly wait; the tests marked `timing` run one at a time
# (tests/conftest.py). The 15 slowest are listed at the end.
test: install check
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup --no-loadscope-reorder --durations=15

# Lint and strict types on the package.
check: install
	$(BIN)/ruff check contend tests benchmarks scripts
	$(BIN)/mypy

# The fast tier: tests that start no process (no Postgres, NATS, server or subprocess), under a
# minute; a test of this tier that tries to start one fails (tests/conftest.py).
fast: install check
	$(BIN)/python -m pytest -m "not integration and not slow"

# Every benchmark with small defaults (about a quarter of an hour on two cores): figures with the
# machine's core count and load average in benchmarks/results.json and the table in docs/performance.md.
bench: install
	$(BIN)/python benchmarks/run_all.py
