#!/usr/bin/env bash
# Runs a command with the test services up (started as scripts/test.sh starts them),
# then stops what it started. Example:
#   ./scripts/with-services.sh cargo bench -p streams-kafka --bench kafka_throughput
set -euo pipefail
cd "$(dirname "$0")/.."
# Benchmarks read the services' variables (not streams-testkit): native services only.
export STREAMS_CONTAINERS=0
# shellcheck source=scripts/services.sh
source scripts/services.sh
services_up
"$@"
