# Lanes: `make up` runs the whole stack locally, `make test` runs every test.
# Both install what is missing first (a venv with the Python deps, Kafka's jars via Maven).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install bytecode kafka-jars s3-server browser kcat container-tools helm image image-gpu lock lint up \
	prometheus jaeger test test-deps bench bench-gpu clean schemas

install: $(STAMP) kafka-jars bytecode

# uv installs the dependencies (parallel downloads, a shared cache in ~/.cache/uv): 35 s
# against pip's 3 min 15 s here with its cache warm; PIP_FIND_LINKS (local wheels) is honoured.
# Then the bytecode of every installed module, written once (about 50 s on 2 cores). Where
# PYTHONDONTWRITEBYTECODE is set (this machine and CI), Python writes none itself and uv
# installs none: every process compiled torch, diffusers and transformers from source again,
# ~7 s of CPU per lane worker and ~680 s of the test suite's. Files that do not parse (a
# package's Python 2 examples) are skipped: nothing imports them.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q 'uv>=0.9,<1'
	UV_NATIVE_TLS=1 $(BIN)/uv pip install -q --python $(BIN)/python \
		$(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) -e '.[dev]'
	$(BIN)/python -c "import compileall, sysconfig; \
		compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
	touch $(STAMP)

# Our modules' bytecode, brought up to date (unchanged files: a timestamp check). See the
# installed packages' in the recipe above for why.
bytecode: $(STAMP)
	@$(BIN)/python -c "import compileall; [compileall.compile_dir(d, quiet=2) \
		for d in ('schemas', 'producers', 'services', 'consumers', 'tests')]"

# Kafka's jars, cached outside the clone by pom content (~/.cache/lanes); a no-op when there.
kafka-jars: $(STAMP)
	@$(BIN)/python -c "from services.kafka.local_broker import ensure_jars; print('kafka jars:', ensure_jars())"
	@$(BIN)/python -c "from services.kafka.local_broker import ensure_class_archive; print('kafka class archive:', ensure_class_archive())" || echo "kafka class archive: none (nodes start without one)"

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
kcat: | browser
	@command -v kcat >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q kcat >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q kcat >/dev/null)) ; } || \
		echo "kcat not installed: the kcat tests will skip"

# podman, buildah and mmdebstrap (Debian's packages) for `make image` and the image tests.
# Installed with apt-get where we may (root); otherwise those tests skip with the reason.
container-tools: | kcat
	@command -v podman >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 || { \
		[ "$$(id -u)" = 0 ] && (apt-get update -q >/dev/null && apt-get install -y -q podman \
		buildah skopeo runc fuse-overlayfs slirp4netns uidmap mmdebstrap >/dev/null) ; } || \
		echo "podman not installed: the container image tests will skip"

# Debian's prometheus package: promtool for the alert-rule tests and a real Prometheus for
# the end-to-end alert check. policy-rc.d keeps the package from starting its service.
prometheus: | container-tools
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && { \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
		(apt-get install -y -q prometheus >/dev/null 2>&1 || (apt-get update -q >/dev/null && \
		 apt-get install -y -q prometheus >/dev/null)); rm -f /usr/sbin/policy-rc.d; } ; } || \
		echo "prometheus not installed: the alert-rule tests will skip"

# Jaeger v2 (the trace backend of the tracing test and of `LANES_JAEGER=1 make up`), built
# from its Go module into ~/.cache/lanes (about 6 minutes on 2 cores); a no-op when there.
jaeger: $(STAMP)
	@$(BIN)/python -c "from services.process.local_jaeger import ensure_jaeger; print('jaeger:', ensure_jaeger())"

# Helm, built from its Go module into ~/.cache/lanes (about 3 minutes on 2 cores); the chart
# tests find it through LANES_HELM.
HELM_VERSION := v3.22.0
HELM := $(HOME)/.cache/lanes/helm-$(HELM_VERSION)/helm
helm: $(HELM)
# The ldflags are helm's own release build's: its version, and the Kubernetes version it
# assumes without a cluster (`helm template`, `helm lint`), that of its client-go (0.37).
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach p,pkg/lint/rules pkg/chartutil,-X helm.sh/helm/v3/$(p).k8sVersionMajor=1 \
	-X helm.sh/helm/v3/$(p).k8sVersionMinor=37)
$(HELM):
	GOBIN=$(dir $(HELM)) go install -ldflags '$(HELM_LDFLAGS)' \
		helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

# The container images (Dockerfile; docs/deployment.md): lanes-cpu, and lanes-gpu with
# `make image-gpu`. BASE_IMAGE=local (default) makes a Debian base here with mmdebstrap.
image:
	bash infra/images/build.sh --cpu-only
image-gpu:
	bash infra/images/build.sh --gpu-only

# The images' lock files (every wheel by hash) from pyproject.toml's extras.
lock: $(STAMP)
	UV_NATIVE_TLS=1 $(BIN)/uv pip compile pyproject.toml --extra server --extra ocr \
		--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--quiet -o infra/images/cpu.lock
	UV_NATIVE_TLS=1 $(BIN)/uv pip compile pyproject.toml --extra workers \
		--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--quiet -o infra/images/gpu.lock
	printf 'setuptools>=69\n' | UV_NATIVE_TLS=1 $(BIN)/uv pip compile - --generate-hashes \
		--python-version 3.11 --quiet -o infra/images/build.lock

# ruff (lint + format check) and the import-direction contracts (import-linter, pyproject).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# What the tests use, fetched and built side by side: on a new machine the three Go builds
# (SeaweedFS, Jaeger, Helm) overlap one another's downloads and the Debian packages' install
# (apt-get runs one at a time: its lock; the order-only prerequisites above chain them).
test-deps:
	$(MAKE) -j4 install s3-server browser kcat container-tools helm prometheus jaeger

test: test-deps
	LANES_HELM=$(HELM) $(BIN)/pytest $(PYTEST_ARGS)

schemas: install
	$(BIN)/lanes schemas export schemas/json

clean:
	rm -rf .lanes results

bench: install
	$(BIN)/lanes bench burst --out results
	$(BIN)/lanes bench cascade --out results
	$(BIN)/lanes bench state --out results
	$(BIN)/lanes bench tracing --out results
	$(BIN)/lanes bench openai --out results

# The same comparisons with real-architecture (random-weight) engines on a CUDA GPU.
bench-gpu: install
	$(BIN)/lanes bench burst --out results/gpu/sd-turbo --preset sd-turbo-class --device cuda \
		--draft-steps 1 --final-steps 25 --width 512 --height 512
	$(BIN)/lanes bench cascade --out results/gpu/sd-turbo --preset sd-turbo-class --device cuda \
		--draft 512 --target 1024 --full-steps 25
	$(BIN)/lanes bench burst --out results/gpu/sdxl --preset sdxl-class --device cuda \
		--draft-steps 4 --final-steps 25 --width 1024 --height 1024
