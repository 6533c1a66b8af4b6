#!/bin/sh
# Fresh machine to test results: install what the tests need, then run them all.
# Extra arguments go to pytest (e.g. scripts/test.sh -k oip -x).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh" --dev
export TF_PLUGIN_DIR="${TF_PLUGIN_DIR:-/opt/tf-plugins}"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
