# Two entry points: `make demo` and `make test`. Both create .venv on first use.
# TORCH: this repository's CI machine has the CPU build of torch 2.13.0 on disk; any torch>=2.4 works
# for users (e.g. `make demo TORCH='torch>=2.4'` on a GPU machine).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint docs install install-dev clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,docs]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/llm-mia demo

# lint: ruff (pyflakes, pycodestyle, import order, bugbear, pyupgrade) and the import-linter contracts
# in pyproject.toml (the layers); docs: the site with its API reference, warnings as errors.
lint: install-dev
	$(VENV)/bin/ruff check llm_mia tests benchmarks
	$(VENV)/bin/lint-imports

docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

test: lint docs
	$(PY) -m pytest

clean:
	rm -rf $(VENV) audit-demo
