# citysense: `make demo` runs the whole city on this machine; `make test` installs what the
# tests need and runs them all (ruff, mypy, pytest).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest system-deps bench soak reliability mutants clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/citysense demo

system-deps:
	sh deploy/install-system-deps.sh

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP) system-deps
	$(PY) -m bench

# The end-to-end suite at full size (60 s InfluxDB outage, 2 min partition); not in CI.
soak: $(STAMP) system-deps
	CITYSENSE_SOAK=1 CITYSENSE_RELIABILITY_DOC=1 $(VENV)/bin/pytest tests/e2e tests/alerts/test_durability.py

# Regenerates docs/reliability.md from the CI-sized end-to-end suite.
reliability: $(STAMP) system-deps
	CITYSENSE_RELIABILITY_DOC=1 $(VENV)/bin/pytest tests/e2e

# Applies each deliberate defect of tests/mutants/ in a copy of the tree and proves that a test
# fails for it; writes the table into docs/reliability.md. Not in CI (about an hour).
mutants: $(STAMP) system-deps
	$(PY) -m tests.mutants.run --doc

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
