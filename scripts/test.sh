#!/usr/bin/env bash
# Runs the whole test suite. Starts the services the integration tests need when they
# are not already reachable (installing them into ~/.cache/streams-tools the first time)
# and stops what it started. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh
services_up

# Every example and platform; not the TLS/SASL features, which need system libraries.
FEATURES=streams-examples/kafka,streams-examples/sql,streams-examples/aws,streams/kafka,streams/sqs,streams/sns,streams/sql,streams/opentelemetry

log=$(mktemp)
status=0
# Benchmarks are left out: they print figures and take minutes (see README).
cargo test --workspace --features "$FEATURES" --lib --bins --tests --examples "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -eq 0 ]; then
  cargo test --workspace --features "$FEATURES" --doc "$@" 2>&1 | tee -a "$log" || status=$?
fi
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' \
  FS='[ ;.]+' "$log"
rm -f "$log"
exit "$status"
