#!/usr/bin/env bash
# Fleet limits in Redis against local limiting, side by side: hardened with
# `--rate 1000000000/s` (every request checked, none refused), once with the limit local and
# once with `--redis` on a redis-server of its own on loopback, alternating rounds, medians.
# Also Redis round trips per request: EVALSHA calls (INFO commandstats) over requests served.
#
#   benches/fleet.sh
#
# Environment (defaults in brackets): ROUNDS [5] DUR [8] seconds per run, WARMUP [1],
# CONNS [64], SERVER_CPUS [0] (hardened, one worker), LOAD_CPUS [1] (wrk and redis-server),
# REDIS_TIMEOUT [5ms] (--redis-timeout: past it a check is decided locally, and five misses in
# a row open the breaker, so under overload the share decided in Redis drops below 1),
# CANDIDATE_BIN [target/release/hardened], NO_BUILD [0]. Needs wrk, redis-server, redis-cli.
# Loopback only; every run is bounded in time.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-8}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-64}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
REDIS_TIMEOUT=${REDIS_TIMEOUT:-5ms}
BIN=${CANDIDATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/hardened}
for tool in wrk redis-server redis-cli taskset; do
    command -v "$tool" >/dev/null || { echo "fleet.sh: needs $tool (apt-get install wrk redis-server util-linux)" >&2; exit 2; }
done
[[ ${NO_BUILD:-0} == 1 ]] || cargo build --release --locked -p hardened

work=$(mktemp -d)
redis_pid=""
server_pid=""
cleanup() {
    [[ -z $server_pid ]] || kill "$server_pid" 2>/dev/null || true
    [[ -z $redis_pid ]] || kill "$redis_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c "$LOAD_CPUS" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do
    redis-cli -p "$port" PING 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
redis-cli -p "$port" PING | grep -q PONG || { echo "fleet.sh: redis-server did not start" >&2; exit 1; }

evalsha_calls() {
    redis-cli -p "$port" INFO commandstats | tr -d '\r' |
        awk -F'[=,:]' '$1 == "cmdstat_evalsha" { print $3; found = 1 } END { if (!found) print 0 }'
}

to_ms() { # wrk latency such as 812.00us, 1.23ms, 2.01s
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else print "NA" }'
}

# run NAME ARGS...: one round of one server; appends "NAME RPS P99 REQUESTS TRIPS" to results.
run() {
    local name=$1 out requests before after
    shift
    taskset -c "$SERVER_CPUS" "$BIN" --listen 127.0.0.1:0 --acceptors 1 --rate 1000000000/s "$@" \
        >"$work/stdout" 2>"$work/stderr" &
    server_pid=$!
    local url=""
    for _ in $(seq 150); do
        url=$(sed -n 's/^listening on //p' "$work/stdout" | head -1)
        [[ -n $url ]] && break
        sleep 0.1
    done
    [[ -n $url ]] || { echo "fleet.sh: hardened did not start: $(cat "$work/stderr")" >&2; exit 1; }
    timeout $((WARMUP + 30)) taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$url/" >/dev/null
    before=$(evalsha_calls)
    out=$(timeout $((DUR + 30)) taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$url/")
    after=$(evalsha_calls)
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    if grep -q "Non-2xx" <<<"$out"; then
        echo "fleet.sh: $name answered non-2xx responses:" >&2
        echo "$out" >&2
        exit 1
    fi
    printf '%s %s %s %s %s\n' "$name" \
        "$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")" \
        "$(to_ms "$(awk '$1 == "99%" { print $2; exit }' <<<"$out")")" \
        "$requests" "$((after - before))" >>"$work/results"
}

for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    if ((round % 2)); then
        run local
        run redis --redis "redis://127.0.0.1:$port/" --redis-timeout "$REDIS_TIMEOUT"
    else
        run redis --redis "redis://127.0.0.1:$port/" --redis-timeout "$REDIS_TIMEOUT"
        run local
    fi
done

python3 - "$work/results" "$ROUNDS" "$DUR" "$CONNS" "$REDIS_TIMEOUT" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
by = {}
for name, rps, p99, requests, trips in rows:
    by.setdefault(name, []).append((float(rps), float(p99), int(requests), int(trips)))
med = lambda xs: statistics.median(xs)
local, redis = by["local"], by["redis"]
l_rps, r_rps = med([r[0] for r in local]), med([r[0] for r in redis])
l_p99, r_p99 = med([r[1] for r in local]), med([r[1] for r in redis])
trips = sum(r[3] for r in redis) / sum(r[2] for r in redis)
print(f"fleet.sh: {sys.argv[2]} rounds, wrk -t1 -c{sys.argv[4]} -d{sys.argv[3]}s, --redis-timeout {sys.argv[5]}, medians")
print(f"  local limit   {l_rps:>10.0f} req/s  p99 {l_p99:.3f} ms")
print(f"  --redis       {r_rps:>10.0f} req/s  p99 {r_p99:.3f} ms")
print(f"  ratio redis/local: req/s {r_rps / l_rps:.3f}  p99 {r_p99 / l_p99:.2f}")
print(f"  Redis round trips per request (EVALSHA / requests; the rest decided locally): {trips:.3f}")
PY
