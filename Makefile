# Two commands for a fresh machine (see README.md):
#   make lab    set up .venv if missing and open the workbook in JupyterLab
#   make test   set up .venv if missing and run the whole test suite
# Everything else here is optional.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mpqlab-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Exact versions of every package the test suite last passed with (pip, setuptools and torch included).
# pyproject.toml keeps the ranges mpqlab supports; this file pins one tested point inside them.
LOCK   := constraints.txt

.PHONY: lab test setup lock test-latest browser-deps runtime html html-fresh pretrain benchmarks clean

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) --upgrade pip
	$(PY) -m pip install -c $(LOCK) --build-constraint $(LOCK) -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# The real-browser test drives Debian's Chromium; install it when missing.
browser-deps:
	@command -v chromium >/dev/null || test -x /usr/bin/chromium || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

test: $(STAMP) browser-deps
	$(PY) -m pytest

# Refresh the lock: resolve the newest releases inside pyproject.toml's ranges in a scratch venv and
# write their exact versions to $(LOCK). Then run `make test` (it reinstalls from the new lock) and
# commit $(LOCK) only if the suite passes.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[test]'
	@{ echo "# Exact versions the test suite passed with; made by 'make lock' (Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())'), $$(uname -sm))."; \
	   echo "# Installs use it as a pip constraints file: pip install -c $(LOCK) -e '.[test]'"; \
	   .venv-lock/bin/python -m pip freeze --all --exclude-editable | LC_ALL=C sort -f; } > $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK); now run 'make test' and commit it if the suite passes"

# Find drift on purpose: the newest releases inside pyproject.toml's ranges, without the lock, in their
# own venv, running the fast tests (no browser, no notebooks, nothing marked slow).
test-latest:
	@test -x .venv-latest/bin/python || $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	.venv-latest/bin/python -m pip freeze --all --exclude-editable | LC_ALL=C sort -f | diff $(LOCK) - | grep '^[<>] [^#]' \
	  || echo "no drift: the newest releases are the ones in $(LOCK)"
	.venv-latest/bin/python -m pytest tests -m "not browser and not slow"

runtime: $(STAMP)
	$(PY) benchmarks/notebook_runtime.py

benchmarks: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

pretrain: $(STAMP)
	$(PY) -m mpqlab.pretrain --model all

# Static HTML for a course website, in site/ with an index.html. The notebooks are stored executed, so
# `html` exports their outputs as they are (about a minute); `html-fresh` re-executes every notebook first
# (as long as `make runtime` reports).
NOTEBOOKS := $(wildcard notebooks/[0-9][0-9]_*.ipynb)

html: $(STAMP)
	$(VENV)/bin/jupyter nbconvert --to html --output-dir site $(NOTEBOOKS)
	$(PY) docs/make_site.py site

html-fresh: $(STAMP)
	$(VENV)/bin/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=600 --output-dir site $(NOTEBOOKS)
	$(PY) docs/make_site.py site

clean:
	rm -rf site screenshots .pytest_cache .venv-lock
