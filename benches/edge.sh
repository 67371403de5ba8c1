#!/usr/bin/env bash
# The accept-path cost of the connection filter and the bans, in user-space instructions per
# connection (benches/instructions.sh churn1: one request per connection), each against the
# bare hyper baseline as instructions.sh always runs it:
#
#   none      hardened with neither (the reference figure)
#   deny10    10 deny rules (the first 10 of deny10k)
#   deny10k   10 000 deny rules (/16 to /32 inside 10.0.0.0/8, none covering the client)
#   bans      --ban-after 1000000: every connection is checked against the bans (none in force)
#
#   benches/edge.sh [none] [deny10] [deny10k] [bans]    (default: all four)
#
# Environment: as instructions.sh (N, REPEATS, RESULTS_DIR, ...); STARTUP_TIMEOUT defaults to
# 180 s here (10 000 rules parsed under valgrind). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS_DIR=${RESULTS_DIR:-$PWD/benches/results}
export STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-180}
mkdir -p "$RESULTS_DIR"
rules="$RESULTS_DIR/deny10k.toml"
rules10="$RESULTS_DIR/deny10.toml"
python3 - "$rules" "$rules10" <<'PY'
import sys
rules = []
for i in range(10_000):
    length = 16 + i % 17
    address = 0x0a000000 | (((i * 2654435761) & 0xffffffff) >> 8)
    address &= (0xffffffff << (32 - length)) & 0xffffffff
    rules.append('"%d.%d.%d.%d/%d"' % (address >> 24, (address >> 16) & 255, (address >> 8) & 255, address & 255, length))
with open(sys.argv[1], "w") as out:
    out.write("deny = [%s]\n" % ", ".join(rules))
with open(sys.argv[2], "w") as out:
    out.write("deny = [%s]\n" % ", ".join(rules[:10]))
PY
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(none deny10 deny10k bans)
for scenario in "${scenarios[@]}"; do
    case "$scenario" in
        none) args="--acceptors 1" ;;
        deny10) args="--acceptors 1 --config $rules10" ;;
        deny10k) args="--acceptors 1 --config $rules" ;;
        bans) args="--acceptors 1 --ban-after 1000000" ;;
        *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    echo "==> $scenario: hardened $args"
    CANDIDATE_NAME="$scenario" CANDIDATE_ARGS="$args" RESULTS_DIR="$RESULTS_DIR/edge-$scenario" \
        benches/instructions.sh churn1
    NO_BUILD=1
    export NO_BUILD
done
