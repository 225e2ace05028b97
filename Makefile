# Entry points. Each target works on a fresh clone: it creates .venv and installs what it needs.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN   ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

.PHONY: setup run test test-long lint docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes this CUDA-capable build from the machine's wheel store; it runs on the CPU too
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,dev,bench]'
	touch $(STAMP)

## The main job: the digits demo (real data, offline) through the service's Ray actor graph
## (embedder pool -> selector -> writer, checkpointed), its decisions and a DuckDB query, then the
## HTML report of the run; the last line printed is the report's path.
run: $(STAMP)
	$(VENV)/bin/curator serve --demo $(RUN)
	$(VENV)/bin/curator report $(RUN)

## The default test suite (bounded: slow fault-injection and soak tests are excluded).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

## The long fault-injection / soak tests.
test-long: $(STAMP)
	$(PY) -m pytest -q -m "slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check curator connectors pipelines tests benchmarks

clean:
	rm -rf runs .pytest_cache test-output

## Regenerate the generated parts of the docs: the configuration reference (docs/configuration.md,
## from the config dataclasses) and docs/benchmarks.md (from the README's benchmark tables).
docs: $(STAMP)
	$(PY) tools/update_docs.py
