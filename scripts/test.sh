#!/usr/bin/env bash
# Runs every test of the workspace: `cargo test --workspace` (extra arguments are passed on),
# after making sure the external tools the end-to-end tests drive are installed:
#   curl      an HTTP/1.1, h2c and HTTPS client
#   openssl   its s_client checks the TLS versions and cipher suites
#   promtool  (Debian package prometheus) checks a live /metrics scrape
#   redis-server, redis-cli  (Debian package redis-server) the fleet-limit tests start their
#             own Redis on a loopback port, kill, stop and pause it
#   initdb, postgres, pg_isready  (Debian package postgresql) the postgres example's tests
#             make their own cluster in a temporary directory and stop and restart it
# Missing tools are installed with apt-get when this runs as root or with sudo; otherwise it
# stops at once and says which packages to install.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || missing+=(redis-server)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || [ -n "${PG_BIN:-}" ] || missing+=(postgresql)

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: the tests need these packages, and this machine has no apt-get: ${missing[*]} (promtool comes with prometheus, redis-cli with redis-server)" >&2
        exit 2
    fi
    if [ "$(id -u)" = 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "error: the tests need these Debian packages; install them as root, then run this again: apt-get install ${missing[*]}" >&2
        exit 2
    fi
    echo "installing ${missing[*]} (the tools the end-to-end tests drive)" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

exec cargo test --workspace "$@"
