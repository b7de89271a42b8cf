#!/usr/bin/env bash
# Installs what the build and the test suite need on a fresh Debian machine, and nothing that is
# already there: the OpenSSL headers for the `openssl` crate. Safe to run repeatedly.
set -euo pipefail

need=()
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: please install: ${need[*]} (apt-get install ${need[*]})" >&2
        exit 1
    fi
    echo "setup: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Optional peers for conformance tests (skipped with a message when absent): Debian's memcached
# and memccapable. Installed only when we are root and apt works; failures here are not fatal.
if [ "$(id -u)" -eq 0 ] && ! command -v memccapable >/dev/null 2>&1; then
    echo "setup: installing memcached libmemcached-tools (conformance peers)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached libmemcached-tools >/dev/null; } \
        || echo "setup: could not install memcached/libmemcached-tools; their tests will be skipped" >&2
fi

# Optional: Debian's cloud-init, whose `cloud-init schema` checks the rendered user-data
# (deploy/cloud-init/); that test is skipped with a message without it.
if [ "$(id -u)" -eq 0 ] && ! command -v cloud-init >/dev/null 2>&1; then
    echo "setup: installing cloud-init (user-data schema checks)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cloud-init >/dev/null; } \
        || echo "setup: could not install cloud-init; the schema test will be skipped" >&2
fi

# Optional peers for the Python client tests (skipped with a message when absent): pymemcache,
# python-memcached, k2hr3client (1.1.3, the K2HR3 service's conformance client), and the real
# OpenStack clients the DBaaS is checked with (python-openstackclient, python-troveclient,
# oslo.messaging) and moto's S3 server (the object store backups are tested against) from
# PyPI, in a venv outside the work tree. Skipped quickly when all already
# import there; failures here are not fatal.
venv="${K2HDKC_VENV:-${HOME:+$HOME/.cache/k2hdkc/venv}}"
if [ -z "$venv" ]; then
    echo "setup: neither K2HDKC_VENV nor HOME is set; the Python client tests will be skipped" >&2
elif ! "$venv/bin/python" -c 'import pymemcache, memcache, k2hr3client, openstackclient, troveclient, oslo_messaging, moto' >/dev/null 2>&1; then
    echo "setup: installing pymemcache python-memcached k2hr3client python-openstackclient python-troveclient oslo.messaging moto[server] into $venv (Python client tests)" >&2
    # A venv whose interpreter no longer runs (its base Python is gone) is made anew; --clear only
    # where pyvenv.cfg shows that the directory is a venv.
    if [ -f "$venv/pyvenv.cfg" ] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
        python3 -m venv --clear "$venv" >/dev/null 2>&1 || true
    fi
    { { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } \
        && "$venv/bin/python" -m pip install -q --disable-pip-version-check \
            pymemcache python-memcached k2hr3client==1.1.3 \
            python-openstackclient python-troveclient oslo.messaging "moto[server]"; } \
        || echo "setup: could not install the Python clients in $venv;" \
            "their tests will be skipped" >&2
fi
