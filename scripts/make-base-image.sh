#!/usr/bin/env bash
# Makes the base image the Dockerfile's `ml` target builds on, where no image registry is
# reachable: a stand-in for python:3.11-slim from Debian's own packages (debootstrap),
# imported into local mode's podman storage as localhost/python:3.11-slim.
# Idempotent and cached: does nothing when the image exists or a registry answers (then
# the Dockerfile's default, the public image, is pulled instead); the root file system is
# made once per machine (about 50 s) and kept as a tarball in the user's cache.
# PODMAN: the podman command to import with (default: local mode's, via the project CLI).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=localhost/python:3.11-slim
read -r -a podman <<<"${PODMAN:-.venv/bin/python -m rakuten_mlops podman}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rakuten-mlops"
tarball="$cache/python-3.11-slim-bookworm.tar"

if ! command -v podman >/dev/null; then
    echo "make-base-image: no podman (scripts/install-system-deps.sh installs it); skipped"
    exit 0
fi
if "${podman[@]}" image exists "$IMAGE"; then
    exit 0
fi
# Docker Hub answers 401 to an anonymous /v2/ request when it is reachable.
if curl -s -o /dev/null -m 5 -w '%{http_code}' https://registry-1.docker.io/v2/ | grep -q '^[24]'; then
    echo "make-base-image: a registry is reachable: the Dockerfile pulls python:3.11-slim itself"
    exit 0
fi

if [ ! -s "$tarball" ]; then
    mirror=$(grep -h -m1 -oP '^URIs:\s*\Khttp\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        || echo http://deb.debian.org/debian)
    mkdir -p "$cache"
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root" "$tarball.new"' EXIT
    echo "make-base-image: debootstrap bookworm from $mirror (about a minute)"
    debootstrap --variant=minbase \
        --include=python3.11,python3-pip,python-is-python3,ca-certificates \
        bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log"; exit 1; }
    # Builds reach PyPI through this machine's CA bundle; Debian's python refuses pip
    # installs into the system environment unless told otherwise (PEP 668).
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\nbreak-system-packages = true\ncert = /etc/ssl/certs/ca-certificates.crt\n' \
        >"$root/etc/pip.conf"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # Written beside, then renamed: an interrupted run leaves no half tarball behind.
    tar -C "$root" -cf "$tarball.new" .
    mv "$tarball.new" "$tarball"
fi
"${podman[@]}" import --quiet --change 'CMD ["python3"]' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    "$tarball" "$IMAGE" >/dev/null
echo "make-base-image: $IMAGE imported"
