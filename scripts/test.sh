#!/usr/bin/env bash
# Runs the whole test suite. Starts the services the integration tests need when they
# are not already reachable (installing them into ~/.cache/streams-tools the first time)
# and stops what it started. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/streams-target}"
export STREAMS_TOOLS="${STREAMS_TOOLS:-$HOME/.cache/streams-tools}"

# shellcheck source=scripts/services.sh
source scripts/services.sh
trap services_stop EXIT
services_start

log=$(mktemp)
status=0
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -eq 0 ]; then
  cargo test --workspace --doc "$@" 2>&1 | tee -a "$log" || status=$?
fi
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' \
  FS='[ ;.]+' "$log"
rm -f "$log"
exit "$status"
