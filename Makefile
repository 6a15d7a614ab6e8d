# Two commands for a fresh machine (see README.md):
#   make lab    set up .venv if missing and open the workbook in JupyterLab
#   make test   set up .venv if missing and run the whole test suite
# Everything else here is optional.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mpqlab-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: lab test setup browser-deps runtime html html-fresh pretrain benchmarks clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
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
	rm -rf site screenshots .pytest_cache
