#!/usr/bin/env bash
# What connection tracking costs: user-space instructions per request of hardened as it is,
# against the same hardened built with benches/untracked.patch, which takes the drain's
# bookkeeping out of the connection path (connection and HTTP/2 stream tasks spawned with
# tokio::spawn instead of on the server's TaskTracker, the driver no longer watching the
# server phase, no open-connection and drained/forced counting). Everything else (deadlines,
# metrics, the service wrappers) is the same in both.
#
#   benches/tracking.sh [SCENARIO...]     scenarios of instructions.sh (default: keepalive churn1)
#
# Builds the patched copy in a temporary git worktree (target/untracked), then runs
# benches/instructions.sh once per binary; prints instructions per request of each and the
# ratio. The patched server cannot drain: it is a measuring device, nothing more.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCENARIOS=("$@")
(( ${#SCENARIOS[@]} > 0 )) || SCENARIOS=(keepalive churn1)

WORK=$(mktemp -d)
cleanup() { git worktree remove --force "$WORK/untracked" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

git worktree add --detach "$WORK/untracked" HEAD >/dev/null
git -C "$WORK/untracked" apply "$ROOT/benches/untracked.patch"
cargo build --release --locked -p hardened --manifest-path "$WORK/untracked/Cargo.toml" \
    --target-dir "$ROOT/target/untracked"
cargo build --release --locked -p hardened -p portcullis-benches


for scenario in "${SCENARIOS[@]}"; do
    for variant in tracked untracked; do
        bin=$ROOT/target/release/hardened
        [[ $variant == untracked ]] && bin=$ROOT/target/untracked/release/hardened
        NO_BUILD=1 RESULTS_DIR="$WORK/$variant" CANDIDATE_NAME=$variant CANDIDATE_BIN=$bin \
            CANDIDATE_ARGS='--acceptors 1' benches/instructions.sh "$scenario" >"$WORK/$variant.log"
    done
    tracked=$(grep -E "^tracked " "$WORK/tracked.log" | awk '{ print $4 }')
    untracked=$(grep -E "^untracked " "$WORK/untracked.log" | awk '{ print $4 }')
    awk -v s="$scenario" -v t="$tracked" -v u="$untracked" 'BEGIN {
        printf "%-10s tracked %9.1f  untracked %9.1f  instructions/request  tracking costs %+.2f%%\n",
            s, t, u, (t / u - 1) * 100 }'
done
