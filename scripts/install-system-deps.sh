#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for local mode: PostgreSQL 15, Prometheus,
# docker-compose (only to validate docker-compose.yml; no engine needed), nginx (only to
# check and test the compose proxy's config), chromium + chromium-driver (browser tests)
# and uv.
# Idempotent: installs nothing when everything is present.
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v prometheus >/dev/null || [ -x /usr/bin/prometheus ] || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
# setfacl: as root, local mode lets only the postgres account traverse the checkout.
command -v setfacl >/dev/null || need+=(acl)
# Browser tests (tests/support/browser.py): Debian's headless Chromium and its driver;
# selenium uses these executables, nothing is downloaded.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# Container mode (no Docker engine here): podman's Docker-compatible API, runc (crun
# cannot set rlimits in this sandbox) and debootstrap to make a base image offline.
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
# CeleryExecutor mode (AIRFLOW_EXECUTOR=celery): Redis as the broker, started by the stack
# with its own config (the Debian service is stopped below).
[ -x /usr/bin/redis-server ] || need+=(redis-server)

if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing system packages: ${need[*]}"
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    # --no-install-recommends: docker-compose would otherwise pull in docker.io and containerd.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}"
    # The Debian package starts a cluster of its own on 5432; local mode runs its own cluster.
    if [[ " ${need[*]} " == *" postgresql-15 "* ]] && command -v pg_ctlcluster >/dev/null; then
        $sudo pg_ctlcluster 15 main stop 2>/dev/null || true
    fi
    # Likewise Debian's redis on 6379: the stack runs its own (password, loopback, .stack/).
    if [[ " ${need[*]} " == *" redis-server "* ]] && command -v service >/dev/null; then
        $sudo service redis-server stop 2>/dev/null || true
    fi
    # Likewise the Debian nginx service on port 80: tests run their own nginx.
    if [[ " ${need[*]} " == *" nginx "* ]] && command -v service >/dev/null; then
        $sudo service nginx stop 2>/dev/null || true
    fi
fi

if ! command -v uv >/dev/null; then
    echo "installing uv"
    python3 -m pip install --quiet "uv==0.13.9"
fi
