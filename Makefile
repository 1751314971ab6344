# Two commands a new user needs: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: venv dev demo test lint bench sample-model azurite clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements-torch.txt $(VENV)/.runtime
	$(PIP) -r requirements-dev.txt
	touch $@

# Azurite, the Azure Storage emulator, pinned in package-lock.json, into this repository's node_modules/.
node_modules/.bin/azurite-blob: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

azurite: node_modules/.bin/azurite-blob  ## run Azurite for local development on 127.0.0.1:10000 (Ctrl-C stops it)
	node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort 10000 --location .azurite --skipApiVersionCheck --loose

venv: $(VENV)/.runtime  ## runtime requirements only (what Azure installs)

dev: $(VENV)/.dev  ## runtime + tests, linters, torch for conversion and parity tests

demo: venv  ## classify the sample photos with the bundled model
	$(BIN)/python -m shared classify samples

lint: dev
	$(BIN)/ruff check .
	$(BIN)/mypy shared

test: lint node_modules/.bin/azurite-blob  ## ruff, mypy on shared/, the whole suite (starts and stops Azurite itself)
	$(BIN)/python -m pytest -q

sample-model: dev  ## re-export model_cache/sample from the PyPI EfficientNet-Lite0 packages
	$(BIN)/python scripts/export_sample_model.py --out model_cache/sample

clean:
	rm -rf $(VENV) node_modules .azurite .pytest_cache .mypy_cache .ruff_cache

bench: dev node_modules/.bin/azurite-blob  ## request path vs bare inference, old-style baseline, cold start, peak RSS (prints JSON last)
	$(BIN)/python scripts/bench.py
