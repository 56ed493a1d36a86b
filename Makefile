# `make help` lists the targets. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml

.DEFAULT_GOAL := help
.PHONY: help install demo data test test-fast test-gpu test-dali test-latest lint format bench docs clean

help: ## Show this help.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: pip takes these two from the local wheel cache instead of
	# resolving a multi-GB CUDA build from the index.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv/ with the `classifier` command and the dev tools.

data: $(STAMP) ## Write the bundled MNIST demo digits as an ImageFolder tree under data/mnist.
	$(BIN)/python -m classifier.demo_data data/mnist

demo: data ## Install, then train configs/quickstart.yaml on the demo digits and test the best checkpoint.
	$(BIN)/classifier fit --config $(CONFIG)

test: $(STAMP) ## Install, then run the whole test suite.
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## Run the tests not marked slow.
	$(BIN)/python -m pytest -q -m "not slow"

test-gpu: $(STAMP) ## On a GPU machine: run the tests that need CUDA (they fail without one).
	$(BIN)/python -m pytest -q -m gpu

DALI_VENV := .venv-dali

test-dali: ## Install the dali extra (NVIDIA DALI, ~0.4 GB) into .venv-dali/, then run the tests marked dali (not run by CI).
	test -x $(DALI_VENV)/bin/python || $(PYTHON) -m venv $(DALI_VENV)
	$(DALI_VENV)/bin/pip install -q --upgrade pip
	$(DALI_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(DALI_VENV)/bin/pip install -q -e '.[dev,dali]'
	CLASSIFIER_TEST_DALI=required $(DALI_VENV)/bin/python -m pytest -q -m dali

LATEST := .venv-latest
# Requirement names from pyproject.toml with every version bound dropped.
UNBOUNDED = $(BIN)/python -c 'import re, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(re.split(r"[<>=!~; ]", r)[0] for r in p["dependencies"] + p["optional-dependencies"]["dev"]))'

test-latest: $(STAMP) ## Newest release of every dependency, caps ignored, in .venv-latest/; then the suite (not run by CI).
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q --upgrade $$($(UNBOUNDED))
	$(LATEST)/bin/pip install -q --no-deps -e .
	$(LATEST)/bin/pip list 2>/dev/null | grep -iE '^(lightning|jsonargparse|torch|timm|torchmetrics) '
	$(LATEST)/bin/python -m pytest -q

lint: $(STAMP) ## ruff (lint + format check) and mypy --strict on classifier/.
	$(BIN)/ruff check classifier tests benchmarks
	$(BIN)/ruff format --check classifier tests benchmarks
	$(BIN)/mypy

format: $(STAMP) ## Apply ruff's fixes and formatting.
	$(BIN)/ruff check --fix classifier tests benchmarks
	$(BIN)/ruff format classifier tests benchmarks

bench: $(STAMP) ## Print speed ratios measured side by side in one run (writes bench.json).
	CLASSIFIER_ALLOWED_CLASS_PATHS=benchmarks. $(BIN)/python -m benchmarks.run

DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP) ## Build the documentation site into site/ (mkdocs build --strict: a broken link fails).
	$(BIN)/mkdocs build --strict --quiet

clean: ## Remove the virtual environment, runs and caches (keeps data/).
	rm -rf $(VENV) $(LATEST) $(DALI_VENV) runs site .pytest_cache .mypy_cache .ruff_cache
