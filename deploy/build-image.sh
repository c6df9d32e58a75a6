#!/usr/bin/env bash
# Builds the bot's image with podman or docker: `make image` (IMAGE=onboarding-bot:local).
#
# Where the Dockerfile's base image cannot be pulled (no registry reachable, as on machines that
# reach only package indexes), a stand-in is made from Debian's own packages with mmdebstrap
# (bookworm, python3 3.11, pip, venv, CA certificates, tzdata) and the Dockerfile is built on it
# unchanged (podman build --from). The host's CA bundle is mounted for that build only, for
# networks that intercept TLS; it is never part of the image.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-onboarding-bot:local}
BASE=${BASE:-localhost/onboarding-base:bookworm}
ENGINE=${ENGINE:-$(command -v podman || command -v docker || true)}
if [ -z "$ENGINE" ]; then
    echo "build-image: neither podman nor docker is installed" >&2
    exit 2
fi
from=$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' Dockerfile | head -n 1)
args=(build -t "$IMAGE")
if [ "$(basename "$ENGINE")" = podman ]; then
    args+=(--format docker) # the OCI format would drop HEALTHCHECK
fi

if ! "$ENGINE" image inspect "$from" >/dev/null 2>&1 \
    && ! timeout 120 "$ENGINE" pull -q "docker.io/library/$from" >/dev/null 2>&1; then
    if [ "$(basename "$ENGINE")" != podman ]; then
        echo "build-image: cannot pull $from, and only podman can build on a local base" >&2
        exit 1
    fi
    if ! "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then
        echo "build-image: $from cannot be pulled; making $BASE from Debian's packages" >&2
        tar=$(mktemp --suffix=.tar)
        trap 'rm -f "$tar"' EXIT
        mmdebstrap --quiet --variant=minbase \
            --include=python3,python3-pip,python3-venv,ca-certificates,tzdata \
            bookworm "$tar"
        # Like the official python image, pip may install into the system interpreter.
        "$ENGINE" import --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" "$tar" "$BASE" >/dev/null
    fi
    args+=(--from "$BASE")
    bundle=/etc/ssl/certs/ca-certificates.crt
    if [ -f "$bundle" ]; then
        args+=(-v "$bundle:$bundle:ro")
    fi
fi
exec "$ENGINE" "${args[@]}" .
