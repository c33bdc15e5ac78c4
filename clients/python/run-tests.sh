#!/usr/bin/env bash
# Runs the Python client's tests against a real server: the binary in $HIGHWATER_BIN (default:
# <repo>/target/debug/highwater, built by cargo) on the PostgreSQL of $DATABASE_URL (default:
# postgres://postgres@127.0.0.1:5432/postgres; each test uses a database of its own).
#
#   bash clients/python/run-tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python generate.py --check

export HIGHWATER_BIN="${HIGHWATER_BIN:-$(cd ../.. && pwd)/target/debug/highwater}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
exec .venv/bin/python -m pytest -q "$@"
