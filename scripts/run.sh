#!/bin/sh
# Fresh machine to running stack: install what is missing, then serve the default
# model through nginx and uWSGI on http://127.0.0.1:8080 (HOST, PORT override).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/python" "$ROOT/deploy/stack.py" run
