#!/usr/bin/env bash
# Installs, generates, builds and tests the TypeScript client against a real Highwater server.
#
#   HIGHWATER_BIN  the server binary (default: <repo>/target/debug/highwater, from `cargo build`)
#   DATABASE_URL   admin URL of the PostgreSQL the test servers use; each test file creates and
#                  drops a database of its own (default: postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail
cd "$(dirname "$0")"

repo_root="$(cd ../.. && pwd)"
export HIGHWATER_BIN="${HIGHWATER_BIN:-$repo_root/target/debug/highwater}"
if [ ! -x "$HIGHWATER_BIN" ]; then
    echo "no Highwater binary at $HIGHWATER_BIN: run 'cargo build' at the repository root or set HIGHWATER_BIN" >&2
    exit 1
fi

# npm ci when node_modules is missing or was installed from another package-lock.json.
stamp=node_modules/.package-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -d node_modules ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "== npm ci"
    npm ci --no-audit --no-fund
    echo "$want" > "$stamp"
fi

# `npm test` runs its pretest first: `npm run generate` (buf generate with ts-proto, from
# ../../proto/buf.gen.yaml into src/gen) and `npm run build` (tsc into dist), then node --test.
echo "== npm test (generate, build, node --test) with HIGHWATER_BIN=$HIGHWATER_BIN"
npm test

# The package as published: `npm pack` (its prepack generates and builds) must hold the built
# client and the generated code.
echo "== npm pack"
packed="$(mktemp -d)"
trap 'rm -rf "$packed"' EXIT
npm pack --silent --pack-destination "$packed" > /dev/null
contents="$(tar tzf "$packed"/highwater-client-*.tgz)"
for file in package/dist/src/index.js package/dist/src/index.d.ts package/dist/src/gen/highwater/v1/event_store.js \
    package/dist/esm/index.mjs package/dist/esm/index.d.mts; do
    grep -qx "$file" <<< "$contents" || { echo "npm pack lacks $file" >&2; exit 1; }
done
echo "npm pack holds the built client and its generated code"
