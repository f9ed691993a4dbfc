# Lanes: `make up` runs the whole stack locally, `make test` runs every test.
# Both install what is missing first (a venv with the Python deps, Kafka's jars via Maven).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install kafka-jars s3-server browser kcat lint up test bench bench-gpu clean schemas

install: $(STAMP) kafka-jars

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Kafka's jars, cached outside the clone by pom content (~/.cache/lanes); a no-op when there.
kafka-jars: $(STAMP)
	@$(BIN)/python -c "from services.kafka.local_broker import ensure_jars; print('kafka jars:', ensure_jars())"

up: install
	$(BIN)/lanes up

# SeaweedFS (the local S3 server the object-storage tests use), built once from its Go
# module into ~/.cache/lanes (about 6 minutes on 2 cores); a no-op when there.
s3-server: $(STAMP)
	@$(BIN)/python -c "from services.storage.local_s3 import ensure_weed; print('s3 server:', ensure_weed())"

# Debian's chromium for the console's browser tests (Playwright drives it; its own browser
# download is not reachable). Installed with apt-get where we may (root); otherwise those
# tests skip with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) ; } || \
		echo "chromium not installed: the browser tests will skip"
	@command -v chromium >/dev/null 2>&1 && echo "browser: $$(command -v chromium)" || true

# kcat (librdkafka's CLI, Debian's package): the independent client of the secured-Kafka
# tests. Installed with apt-get where we may (root); otherwise those tests skip.
kcat:
	@command -v kcat >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q kcat >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q kcat >/dev/null)) ; } || \
		echo "kcat not installed: the kcat tests will skip"

# ruff (lint + format check) and the import-direction contracts (import-linter, pyproject).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: install s3-server browser kcat
	$(BIN)/pytest $(PYTEST_ARGS)

schemas: install
	$(BIN)/lanes schemas export schemas/json

clean:
	rm -rf .lanes results

bench: install
	$(BIN)/lanes bench burst --out results
	$(BIN)/lanes bench cascade --out results
	$(BIN)/lanes bench state --out results

# The same comparisons with real-architecture (random-weight) engines on a CUDA GPU.
bench-gpu: install
	$(BIN)/lanes bench burst --out results/gpu/sd-turbo --preset sd-turbo-class --device cuda \
		--draft-steps 1 --final-steps 25 --width 512 --height 512
	$(BIN)/lanes bench cascade --out results/gpu/sd-turbo --preset sd-turbo-class --device cuda \
		--draft 512 --target 1024 --full-steps 25
	$(BIN)/lanes bench burst --out results/gpu/sdxl --preset sdxl-class --device cuda \
		--draft-steps 4 --final-steps 25 --width 1024 --height 1024
