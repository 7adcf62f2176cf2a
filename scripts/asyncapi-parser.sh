#!/usr/bin/env bash
# Installs the AsyncAPI initiative's parser (@asyncapi/parser from npm) into the tools
# cache once, and prints its directory. scripts/asyncapi-validate.mjs loads it from
# there; the streams-asyncapi tests call this script.
set -euo pipefail

# 3.x parses AsyncAPI 3.0 (and 2.x) documents.
ASYNCAPI_PARSER_VERSION=3.6.6
STREAMS_TOOLS="${STREAMS_TOOLS:-$HOME/.cache/streams-tools}"
dir="$STREAMS_TOOLS/asyncapi-parser"
installed="$dir/node_modules/@asyncapi/parser/package.json"

mkdir -p "$dir"
# One install at a time (test binaries and scripts may ask at once).
exec 9>"$dir/.lock"
flock 9
if [ ! -f "$installed" ] || ! grep -q "\"version\": \"$ASYNCAPI_PARSER_VERSION\"" "$installed"; then
  echo "installing @asyncapi/parser $ASYNCAPI_PARSER_VERSION into $dir (once)" >&2
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
    "@asyncapi/parser@$ASYNCAPI_PARSER_VERSION" >"$dir/install.log" 2>&1 || {
    echo "npm install @asyncapi/parser failed; see $dir/install.log" >&2
    exit 1
  }
fi
echo "$dir"
