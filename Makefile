# citysense: `make demo` runs the whole city on this machine; `make test` installs what the
# tests need and runs them all (ruff, mypy, pytest).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test files run on two workers; each starts its own servers on its own free ports.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: demo test lint typecheck pytest system-deps bench soak reliability mutants clean dist deb

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# system-deps first: building aiocoap's DTLS (DTLSSocket) from source needs a C toolchain.
demo: system-deps $(STAMP)
	$(VENV)/bin/citysense demo

system-deps:
	sh deploy/install-system-deps.sh

test: system-deps $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: system-deps $(STAMP)
	$(PY) -m bench

# The end-to-end suite at full size (60 s InfluxDB outage, 2 min partition); not in CI.
soak: system-deps $(STAMP)
	CITYSENSE_SOAK=1 CITYSENSE_RELIABILITY_DOC=1 $(VENV)/bin/pytest tests/e2e tests/alerts/test_durability.py

# Regenerates docs/reliability.md from the CI-sized end-to-end suite.
reliability: system-deps $(STAMP)
	CITYSENSE_RELIABILITY_DOC=1 $(VENV)/bin/pytest tests/e2e

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

# The wheel and the source distribution in dist/.
dist: $(STAMP)
	rm -f dist/citysense-$(VERSION)*
	$(PY) -m build --outdir dist .

# dist/citysense_<version>_all.deb: /opt/citysense (extras: CITYSENSE_DEB_EXTRAS, default all),
# /usr/bin/citysense, systemd units, /etc/citysense examples (see docs/deploy.md).
deb: dist
	sh deploy/build-deb.sh dist/citysense-$(VERSION)-py3-none-any.whl dist

# Applies each deliberate defect of tests/mutants/ in a copy of the tree and proves that a test
# fails for it; writes the table into docs/reliability.md. Not in CI (about an hour).
mutants: $(STAMP) system-deps
	$(PY) -m tests.mutants.run --doc

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
