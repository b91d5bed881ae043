#!/usr/bin/env bash
# The two quick-start commands:
#   ./dev.sh run    build (release) and start a development server on 127.0.0.1:8008
#   ./dev.sh test   run the whole test suite
# Both install missing system build dependencies first (libclang-dev for RocksDB's bindings).
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_system_dependencies() {
    local missing=()
    dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    # jemalloc (the binary's allocator) builds with make.
    command -v make >/dev/null 2>&1 || missing+=(make)
    command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "dev.sh: installing ${missing[*]}" >&2
        as_root apt-get update -q
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${missing[@]}"
    fi
}

install_test_dependencies() {
    # Real client libraries the integration tests drive (pinned in tests/requirements.txt).
    if [ -f tests/requirements.txt ]; then
        python3 -m pip install -q -r tests/requirements.txt
    fi
    install_synapse
    install_js_sdk
}

# Synapse, the reference the matrix-js-sdk test compares us with (pinned in
# tests/synapse-requirements.txt), in a virtual environment of its own where
# tests/integration/synapse.rs looks for it.
install_synapse() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/tuwunel-tests/synapse-venv"
    if [ ! -x "$venv/bin/python" ]; then
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            rm -rf "$venv"
            as_root apt-get update -q
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q python3-venv
            python3 -m venv "$venv"
        fi
    fi
    # Prebuilt wheels (Synapse has a Rust extension) unless none fits this platform.
    "$venv/bin/python" -m pip install -q --only-binary=:all: -r tests/synapse-requirements.txt \
        || "$venv/bin/python" -m pip install -q -r tests/synapse-requirements.txt
}

# matrix-js-sdk, pinned by tests/clients/js/package-lock.json (Node.js 20 or later).
install_js_sdk() {
    if ! command -v npm >/dev/null 2>&1; then
        as_root apt-get update -q
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q nodejs npm
    fi
    (cd tests/clients/js && npm ci --no-audit --no-fund --loglevel=error)
}

command="${1:-}"
shift || true
case "$command" in
    run)
        install_system_dependencies
        exec cargo run --release --locked --bin tuwunel -- "$@"
        ;;
    test)
        install_system_dependencies
        install_test_dependencies
        exec cargo test --locked "$@"
        ;;
    *)
        echo "usage: ./dev.sh run [tuwunel arguments] | ./dev.sh test [cargo test arguments]" >&2
        exit 2
        ;;
esac
