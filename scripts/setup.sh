#!/bin/sh
# Install what modelstack needs on a fresh Debian/Ubuntu machine, then nothing more.
#
#   scripts/setup.sh          runtime: nginx, a C compiler for uWSGI, the Python venv
#   scripts/setup.sh --dev    also what the tests use: prometheus, exporters, chromium, wrk, ...
#
# Idempotent: packages already present are skipped, and the venv is only
# reinstalled when a requirements file changed. Needs root or sudo for apt.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages that provide each command we need (command:package).
RUNTIME_NEEDS="nginx:nginx gcc:gcc"
DEV_NEEDS="prometheus:prometheus promtool:prometheus prometheus-nginx-exporter:prometheus-nginx-exporter
prometheus-node-exporter:prometheus-node-exporter chromium:chromium wrk:wrk docker-compose:docker-compose
systemd-analyze:systemd git:git shellcheck:shellcheck systemd-nspawn:systemd-container"

missing=""
check() {
    for pair in $1; do
        command=${pair%%:*}
        package=${pair#*:}
        if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$command" ] && [ ! -x "/usr/bin/$command" ]; then
            missing="$missing $package"
        fi
    done
}
check "$RUNTIME_NEEDS"
[ "$DEV" -eq 1 ] && check "$DEV_NEEDS"
# uWSGI compiles against Python's headers; venv needs ensurepip.
if ! "$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    missing="$missing python3-dev"
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    missing="$missing python3-venv"
fi

if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086  # word splitting is the point
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # Debian starts nginx on install; the stack runs its own, so free port 80 again.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
        as_root systemctl disable --now nginx >/dev/null 2>&1 || true
    fi
fi

requirements="$ROOT/requirements.txt"
[ "$DEV" -eq 1 ] && requirements="$ROOT/requirements-dev.txt"
stamp="$VENV/.installed-$(basename "$requirements")"
digest=$(cat "$ROOT/requirements.txt" "$requirements" | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    say "installing Python packages from $(basename "$requirements") (uWSGI compiles: a minute or two)"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -r "$requirements"
    echo "$digest" > "$stamp"
fi
# checkov pins versions that break pytest, so it lives in a venv of its own.
if [ "$DEV" -eq 1 ] && [ -f "$ROOT/requirements-checkov.txt" ]; then
    tools="$ROOT/.venv-checkov"
    digest=$(sha256sum < "$ROOT/requirements-checkov.txt" | cut -d' ' -f1)
    if [ "$(cat "$tools/.installed" 2>/dev/null)" != "$digest" ]; then
        say "installing checkov into $tools"
        [ -x "$tools/bin/python" ] || "$PYTHON" -m venv "$tools"
        "$tools/bin/pip" install --quiet -r "$ROOT/requirements-checkov.txt"
        echo "$digest" > "$tools/.installed"
    fi
fi
say "ready: $VENV"
