#!/usr/bin/env bash
# Instructions and allocations per message of `streams bench` on memory://, for the
# connection (`streams`), the bus without spans and metrics (`bare`) and a raw tokio
# mpsc channel (`raw`), counted by valgrind's callgrind (this machine's CPU counters are
# not reachable: `perf stat -e instructions` says "not supported" in the VM).
#
# Each case runs with N1 and N2 messages; the difference divided by N2 - N1 leaves out
# start-up. Counts do not depend on the machine's load, but they do move with how the
# threads took turns: mimalloc's collection of blocks freed by another thread varies
# by a few hundred instructions per message between runs. Each count is therefore the
# least of ROUNDS runs.
#
#   scripts/bench-cpu.sh                 # builds the release binary first
#   STREAMS=path/to/streams N1=20000 N2=60000 ROUNDS=3 scripts/bench-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-20000}
N2=${N2:-60000}
ROUNDS=${ROUNDS:-3}
if [ -z "${STREAMS:-}" ]; then
    cargo build --release -p streams-cli --bin streams >&2
    STREAMS="${CARGO_TARGET_DIR:-target}/release/streams"
fi
command -v valgrind >/dev/null || { echo "bench-cpu: valgrind is not installed" >&2; exit 1; }

# Instructions of one run: callgrind's total over every thread.
run_instructions() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$STREAMS" --url memory:// \
        bench -n "$2" --cases "$1" --no-progress --json 2>&1 >/dev/null \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

# The least instructions of ROUNDS runs.
instructions() {
    local least="" n
    for _ in $(seq "$ROUNDS"); do
        n=$(run_instructions "$1" "$2")
        if [ -z "$least" ] || [ "$n" -lt "$least" ]; then least=$n; fi
    done
    echo "$least"
}

# Allocations per message as the bench prints them (counted by the binary's allocator).
allocations() {
    "$STREAMS" --url memory:// bench -n "$N2" --cases "$1" --no-progress --json 2>/dev/null \
        | sed -n 's/.*"allocations_per_message":\([0-9.]*\).*/\1/p' | head -1 \
        | xargs printf '%.1f\n'
}

printf '%-8s %14s %12s %12s\n' case instr/msg allocs/msg "vs raw"
raw_per=""
for case in raw bare streams; do
    i1=$(instructions "$case" "$N1")
    i2=$(instructions "$case" "$N2")
    per=$(( (i2 - i1) / (N2 - N1) ))
    [ "$case" = raw ] && raw_per=$per
    ratio=$(awk -v a="$per" -v b="$raw_per" 'BEGIN { printf "%.2f", a / b }')
    printf '%-8s %14s %12s %12s\n' "$case" "$per" "$(allocations "$case")" "$ratio"
done
