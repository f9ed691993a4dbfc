#!/usr/bin/env bash
# Build Lanes' container images (`make image`): lanes-cpu (the CPU components and the CLI)
# and, with --gpu, lanes-gpu (lane workers). Tags: localhost/lanes-{cpu,gpu}:<version>, the
# names the Helm chart's default values use (push them to your registry and set
# image.registry). Builds with podman, buildah or docker, whichever is here.
#
#   infra/images/build.sh [--gpu] [--cpu-only] [--print-tags]
#   BASE_IMAGE=local (default)  a Debian bookworm base made here with mmdebstrap from
#                               Debian's packages (no registry needed), cached in the store
#   BASE_IMAGE=debian:bookworm-slim   pull a base as usual instead
#   EXTRA_CA_BUNDLE=/path.crt   a TLS-intercepting proxy's CA for pip, as a build secret
#   LANES_PODMAN_DEFAULTS=1     use podman's own configuration and store instead of the
#                               private one under ~/.cache/lanes/containers (runc, cgroupfs)
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
REGISTRY=${LANES_IMAGE_REGISTRY:-localhost}
CPU_TAG="$REGISTRY/lanes-cpu:$VERSION"
GPU_TAG="$REGISTRY/lanes-gpu:$VERSION"
targets=(cpu)
for arg in "$@"; do
  case "$arg" in
    --print-tags) echo "$CPU_TAG"; echo "$GPU_TAG"; exit 0 ;;
    --gpu) targets=(cpu gpu) ;;
    --gpu-only) targets=(gpu) ;;
    --cpu-only) targets=(cpu) ;;
    *) echo "unknown argument $arg (--gpu, --gpu-only, --cpu-only, --print-tags)" >&2; exit 2 ;;
  esac
done

if command -v podman >/dev/null 2>&1; then
  engine=(podman)
elif command -v buildah >/dev/null 2>&1; then
  engine=(buildah)
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=(docker)
else
  echo "make image needs a container engine: install podman (Debian/Ubuntu: apt-get install" \
    "podman buildah runc mmdebstrap uidmap fuse-overlayfs) or a running Docker engine" >&2
  exit 2
fi

if [ "${engine[0]}" != docker ] && [ -z "${LANES_PODMAN_DEFAULTS:-}" ]; then
  # shellcheck source=infra/images/podman-env.sh
  source infra/images/podman-env.sh
fi

BASE_IMAGE=${BASE_IMAGE:-local}
if [ "$BASE_IMAGE" = local ]; then
  BASE_IMAGE=localhost/lanes-base:bookworm
  if ! "${engine[0]}" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null 2>&1 || {
      echo "BASE_IMAGE=local needs mmdebstrap (apt-get install mmdebstrap), or set" \
        "BASE_IMAGE=debian:bookworm-slim to pull one" >&2
      exit 2
    }
    echo "building the base $BASE_IMAGE from Debian's packages (mmdebstrap)" >&2
    # The machine's extra CA certificates go into the base, so pip inside the build trusts a
    # TLS-intercepting proxy; a base is therefore made on each machine, not shared.
    mmdebstrap --quiet --variant=minbase \
      --include=python3,python3-venv,ca-certificates,tini,libgl1,libglib2.0-0 \
      --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
      --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
      --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      bookworm - | "${engine[0]}" import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  fi
fi

REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE=${LANES_IMAGE_SOURCE:-$(git config --get remote.origin.url 2>/dev/null || echo unknown)}
args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$VERSION"
  --build-arg "REVISION=$REVISION" --build-arg "SOURCE=$SOURCE"
  # Also as --label: buildah's layer cache does not see a changed build argument.
  --label "org.opencontainers.image.version=$VERSION"
  --label "org.opencontainers.image.revision=$REVISION"
  --label "org.opencontainers.image.source=$SOURCE")
[ -n "${EXTRA_CA_BUNDLE:-}" ] && args+=(--secret "id=ca-bundle,src=$EXTRA_CA_BUNDLE")
case "${engine[0]}" in
  podman) args+=(--pull=never --network host) ;;  # local bases; pip reaches PyPI directly
  buildah) engine=(buildah bud); args+=(--pull-never --network host) ;;
  docker) engine=(docker build) ;;
esac
[ "${engine[0]}" = podman ] && engine=(podman build)

for target in "${targets[@]}"; do
  tag=$CPU_TAG; [ "$target" = gpu ] && tag=$GPU_TAG
  start=$(date +%s)
  "${engine[@]}" "${args[@]}" --target "$target" -t "$tag" -f Dockerfile . >&2
  echo "built $tag in $(( $(date +%s) - start )) s" >&2
  echo "$tag"
done
