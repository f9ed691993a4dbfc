# syntax=docker/dockerfile:1
# Lanes' container images, built from the repository (`make image`, docs/deployment.md):
#   --target cpu  the gateway, router, deferred, jobs, verifier, webhooks, webhook-retries,
#                 control and the `lanes` CLI: no torch, no CUDA;
#   --target gpu  lane workers: torch's CUDA build (its CUDA libraries come as wheels; the
#                 driver comes from the node), diffusers, transformers.
# Each installs exactly the wheels of its lock file (infra/images/{cpu,gpu}.lock, by hash),
# so two builds a month apart install the same bytes. The entrypoint is `lanes run`: the
# component is the argument (`gateway`, `router`, `worker --lane draft`, ...).
ARG BASE_IMAGE=debian:bookworm-slim

# The operating system: Python 3.11, CA certificates, tini (PID 1 passes SIGTERM on, so a
# worker drains), and the two libraries OpenCV (the verifier's OCR) loads. A base already
# carrying them (the one `make image` makes with mmdebstrap) skips apt.
FROM ${BASE_IMAGE} AS os
RUN set -eu; missing=""; \
    for p in python3 python3-venv ca-certificates tini libgl1 libglib2.0-0; do \
      dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $missing && \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/lanes --no-create-home \
      --shell /usr/sbin/nologin lanes; \
    mkdir -p /var/lib/lanes && chown lanes:lanes /var/lib/lanes

# A wheel of this repository (pure Python), built once for both images.
FROM os AS wheel
COPY infra/images/build.lock /tmp/locks/
# An extra CA bundle for a TLS-intercepting proxy, as a build secret (never in a layer):
#   --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi; \
    python3 -m venv /opt/build && \
    /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/locks/build.lock
COPY pyproject.toml README.md /src/
COPY schemas /src/schemas
COPY producers /src/producers
COPY services /src/services
COPY consumers /src/consumers
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels /src

FROM os AS venv-cpu
COPY infra/images/cpu.lock /tmp/locks/
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi; \
    python3 -m venv /opt/lanes && \
    /opt/lanes/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/locks/cpu.lock
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/lanes/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl

FROM os AS venv-gpu
COPY infra/images/gpu.lock /tmp/locks/
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi; \
    python3 -m venv /opt/lanes && \
    /opt/lanes/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/locks/gpu.lock
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/lanes/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl

# What both images share at run time: a non-root user, the state directory as a volume
# (the process's views, rebuilt from Kafka; images live in the object store), the labels.
FROM os AS runtime
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/lanes/lanes
LABEL org.opencontainers.image.title="lanes" \
      org.opencontainers.image.description="Async, event-driven image generation on Apache Kafka" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/lanes/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    LANES_PROFILE=production \
    LANES_STATE_DIR=/var/lib/lanes \
    LANES_GATEWAY_HOST=0.0.0.0 \
    LANES_METRICS_HOST=0.0.0.0
VOLUME /var/lib/lanes
WORKDIR /var/lib/lanes
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--", "lanes", "run"]
CMD ["--help"]

FROM runtime AS gpu
COPY --from=venv-gpu /opt/lanes /opt/lanes
LABEL org.opencontainers.image.title="lanes-gpu"

FROM runtime AS cpu
COPY --from=venv-cpu /opt/lanes /opt/lanes
LABEL org.opencontainers.image.title="lanes-cpu"
