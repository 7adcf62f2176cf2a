#!/usr/bin/env bash
# Runs a command with the test services up (started as scripts/test.sh starts them),
# then stops what it started. Example:
#   ./scripts/with-services.sh cargo bench -p streams-kafka --bench kafka_throughput
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/streams-target}"
export STREAMS_TOOLS="${STREAMS_TOOLS:-$HOME/.cache/streams-tools}"
# shellcheck source=scripts/services.sh
source scripts/services.sh
trap services_stop EXIT
services_start
"$@"
