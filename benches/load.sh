#!/usr/bin/env bash
# portcullis end-to-end load benchmark: hardened (the candidate) against a bare hyper baseline and,
# for the per-core mode, against nginx. Loopback only; every load run is bounded in time.
#
#   benches/load.sh [SCENARIO...]      scenarios: keepalive churn1 churn10 churn1-mt churn10-mt percore
#                                      peers (default: all but peers)
#   churn1-mt/churn10-mt: every server gets all cores (a worker per core; hardened binds an
#   SO_REUSEPORT acceptor per core, the baseline has its single accept loop), load unpinned.
#   peers: keepalive's load against the stacks a user would otherwise pick, with the same routes
#   and limits (benches/peers: axum-server + tower_governor + metrics-exporter-prometheus, and
#   actix-web + actix-governor); give the candidate the same features:
#     CANDIDATE_ARGS='--admin 127.0.0.1:0 --rate 1000000000/s --max-conns-per-ip 10000' \
#     CANDIDATE_NAME=full-stack benches/load.sh peers
#   The peers are their own cargo workspace, built here (into $CARGO_TARGET_DIR/peers) and
#   nowhere else.
#
# Environment (defaults in brackets):
#   ROUNDS [5]  DUR [10] seconds per measured run  WARMUP [1] seconds of unmeasured load first
#   CONNS [64] concurrent connections              STARTUP_TIMEOUT [15] seconds to wait for a server
#   SERVER_CPUS [0]  LOAD_CPUS [1]   taskset lists for the single-worker scenarios (2+ cores only)
#   PERCORE_CORES [all]  cores the percore servers get; below all, servers are pinned to the
#                        first PERCORE_CORES cores and the load to the rest
#   PERCORE_WRK_THREADS [1]
#   CANDIDATE_BIN [target/release/hardened]  CANDIDATE_NAME [hardened, or "candidate" if the
#                        binary is overridden]  CANDIDATE_ARGS [] extra flags
#   PERCORE_FLAG [--per-core]  flag turning the candidate into its per-core mode ("" for none)
#   BASELINE_BIN, CHURN_BIN, NGINX_BIN, AXUM_BIN, ACTIX_BIN, RESULTS_DIR [benches/results]
#   NO_BUILD [0]
#
# Plumbing check without hardened (the baseline against itself):
#   ROUNDS=1 DUR=3 CANDIDATE_BIN=target/release/baseline PERCORE_FLAG= benches/load.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROUNDS=${ROUNDS:-5}
DUR=${DUR:-10}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-64}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-15}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BASELINE_BIN=${BASELINE_BIN:-$TARGET_DIR/release/baseline}
CHURN_BIN=${CHURN_BIN:-$TARGET_DIR/release/churn}
PEERS_TARGET_DIR=$TARGET_DIR/peers
AXUM_BIN=${AXUM_BIN:-$PEERS_TARGET_DIR/release/axum-peer}
ACTIX_BIN=${ACTIX_BIN:-$PEERS_TARGET_DIR/release/actix-peer}
if [[ -n ${CANDIDATE_BIN:-} ]]; then
    CANDIDATE_OVERRIDDEN=1
    CANDIDATE_NAME=${CANDIDATE_NAME:-candidate}
else
    CANDIDATE_OVERRIDDEN=0
    CANDIDATE_BIN=$TARGET_DIR/release/hardened
    CANDIDATE_NAME=${CANDIDATE_NAME:-hardened}
fi
CANDIDATE_ARGS=${CANDIDATE_ARGS:-}
PERCORE_FLAG=${PERCORE_FLAG---per-core}
PERCORE_WRK_THREADS=${PERCORE_WRK_THREADS:-1}
NGINX_BIN=${NGINX_BIN:-nginx}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/benches/results}
NO_BUILD=${NO_BUILD:-0}
NCPU=$(nproc)
PERCORE_CORES=${PERCORE_CORES:-$NCPU}

ALL_SCENARIOS=(keepalive churn1 churn10 churn1-mt churn10-mt percore)
PEERS=(axum actix)

die() { echo "load.sh: $*" >&2; exit 1; }
warn() { echo "load.sh: warning: $*" >&2; }

for v in ROUNDS DUR CONNS STARTUP_TIMEOUT PERCORE_CORES PERCORE_WRK_THREADS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds, not '$WARMUP'"
(( PERCORE_CORES <= NCPU )) || die "PERCORE_CORES=$PERCORE_CORES but this machine has $NCPU cores"
[[ $CANDIDATE_NAME != baseline && $CANDIDATE_NAME != nginx && $CANDIDATE_NAME != axum &&
    $CANDIDATE_NAME != actix ]] ||
    die "CANDIDATE_NAME must differ from 'baseline', 'nginx', 'axum' and 'actix'"

SCENARIOS=()
for arg in "$@"; do
    case $arg in
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        keepalive | churn1 | churn10 | churn1-mt | churn10-mt | percore | peers) SCENARIOS+=("$arg") ;;
        *) die "unknown scenario '$arg' (want: ${ALL_SCENARIOS[*]} peers)" ;;
    esac
done
(( ${#SCENARIOS[@]} )) || SCENARIOS=("${ALL_SCENARIOS[@]}")

# Pinning. On 2+ cores the single-worker scenarios run the server (1 worker) on SERVER_CPUS and
# the load generator on LOAD_CPUS, so neither steals the other's CPU. On 1 core nothing is pinned.
if (( NCPU >= 2 )); then
    SERVER_CPUS=${SERVER_CPUS:-0}
    LOAD_CPUS=${LOAD_CPUS:-1}
else
    SERVER_CPUS=${SERVER_CPUS:-}
    LOAD_CPUS=${LOAD_CPUS:-}
fi
# percore: servers get PERCORE_CORES cores; the load gets the rest, or shares when there is none.
if (( PERCORE_CORES < NCPU )); then
    PERCORE_SERVER_CPUS="0-$((PERCORE_CORES - 1))"
    PERCORE_LOAD_CPUS="$PERCORE_CORES-$((NCPU - 1))"
else
    PERCORE_SERVER_CPUS=""
    PERCORE_LOAD_CPUS=""
fi

# ---------------------------------------------------------------------------------------------
# Processes and cleanup

# shellcheck source=procs.sh
source "$ROOT/benches/procs.sh"
procs_init load

# stop_server PID NAME: SIGTERM, wait up to 10 s, then SIGKILL.
stop_server() {
    local pid=$1 name=$2 rc=0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        warn "$name (pid $pid) ignored SIGTERM for 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    forget_pid "$pid"
    (( rc == 0 )) || warn "$name exited with status $rc after SIGTERM"
}

# check_hello PORT: the server answers GET / with hello.
check_hello() {
    [[ $(curl -s --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null) == hello ]]
}

# start_portcullis NAME CPUS CMD...: start a server that prints `listening on http://IP:PORT`;
# sets SRV_PID and SRV_PORT.
start_portcullis() {
    local name=$1 cpus=$2; shift 2
    local log="$WORK/$name.log" line deadline=$((SECONDS + STARTUP_TIMEOUT))
    spawn "$cpus" "$log" "$@"
    while :; do
        if line=$(grep -m1 -o 'listening on http://[0-9.]*:[0-9]*' "$log"); then
            SRV_PORT=${line##*:}
            break
        fi
        if ! kill -0 "$SRV_PID" 2>/dev/null; then
            wait "$SRV_PID" 2>/dev/null || true
            forget_pid "$SRV_PID"
            die "$name exited during start-up ($*):$(printf '\n'; tail -n 20 "$log")"
        fi
        if (( SECONDS >= deadline )); then
            stop_server "$SRV_PID" "$name"
            die "$name printed no 'listening on' line within ${STARTUP_TIMEOUT}s ($*)"
        fi
        sleep 0.05
    done
    check_hello "$SRV_PORT" || die "$name on port $SRV_PORT does not answer GET / with hello"
}

# start_nginx CPUS WORKERS: nginx from a generated config on a free port in 20000-29999 (below
# the ephemeral range the load generators use); sets SRV_PID and SRV_PORT.
start_nginx() {
    local cpus=$1 workers=$2 attempt dir user_line="" deadline
    (( EUID != 0 )) || user_line="user $(id -un) $(id -gn);"   # workers stay the current user
    for attempt in 1 2 3 4 5; do
        SRV_PORT=$((20000 + RANDOM % 10000))
        if ss -Htln "sport = :$SRV_PORT" | grep -q .; then continue; fi
        dir="$WORK/nginx.$attempt.$SRV_PORT"
        mkdir -p "$dir"
        cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
daemon off;
master_process on;
error_log stderr warn;
pid $dir/nginx.pid;
$user_line
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    # hyper has no per-connection request cap; nginx's default of 1000 would make wrk reconnect.
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    server {
        # One SO_REUSEPORT socket per worker, like the candidate's per-core listeners.
        listen 127.0.0.1:$SRV_PORT reuseport backlog=4096;
        location = / { default_type text/plain; return 200 "hello\n"; }
        location / { return 404; }
    }
}
EOF
        spawn "$cpus" "$dir/log" "$NGINX_BIN" -e stderr -p "$dir" -c "$dir/nginx.conf"
        deadline=$((SECONDS + STARTUP_TIMEOUT))
        while kill -0 "$SRV_PID" 2>/dev/null && (( SECONDS < deadline )); do
            check_hello "$SRV_PORT" && return 0
            sleep 0.1
        done
        if kill -0 "$SRV_PID" 2>/dev/null; then
            stop_server "$SRV_PID" nginx
            die "nginx did not answer on port $SRV_PORT within ${STARTUP_TIMEOUT}s"
        fi
        wait "$SRV_PID" 2>/dev/null || true
        forget_pid "$SRV_PID"
        grep -q 'Address already in use' "$dir/log" ||
            die "nginx failed to start:$(printf '\n'; tail -n 20 "$dir/log")"
    done
    die "no free port for nginx after 5 attempts"
}

# start_server SCENARIO NAME: start NAME as configured for SCENARIO.
start_server() {
    local scenario=$1 name=$2 cpus workers
    if [[ $scenario == percore ]]; then
        cpus=$PERCORE_SERVER_CPUS workers=$PERCORE_CORES
    elif [[ $scenario == *-mt ]]; then
        cpus="" workers=$NCPU
    else
        cpus=$SERVER_CPUS workers=1
    fi
    case $name in
        baseline) start_portcullis baseline "$cpus" "$BASELINE_BIN" --listen 127.0.0.1:0 --workers "$workers" ;;
        nginx) start_nginx "$cpus" "$workers" ;;
        axum | actix)
            local bin=$AXUM_BIN
            [[ $name == axum ]] || bin=$ACTIX_BIN
            # The full stack's features: metrics served on an admin address, a per-IP rate limit
            # that never triggers, and a per-IP connection cap.
            start_portcullis "$name" "$cpus" "$bin" --listen 127.0.0.1:0 --workers "$workers" \
                --admin 127.0.0.1:0 --rate 1000000000 --max-conns-per-ip 10000
            ;;
        *)
            local extra=()
            # shellcheck disable=SC2206 # CANDIDATE_ARGS is a list of flags, split on purpose
            extra=($CANDIDATE_ARGS)
            if [[ $scenario == percore && -n $PERCORE_FLAG ]]; then extra+=("$PERCORE_FLAG"); fi
            # tokio sizes its default runtime from the CPU affinity mask; the variable makes the
            # worker count explicit.
            start_portcullis "$name" "$cpus" env TOKIO_WORKER_THREADS="$workers" \
                "$CANDIDATE_BIN" --listen 127.0.0.1:0 "${extra[@]}"
            ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Load generators. Each sets R_RPS R_P50 R_P99 (ms) R_ERR, or "NA" when the run failed.

to_ms() { # wrk latency such as 812.00us, 1.23ms, 2.01s, 1.00m
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else print "NA" }'
}

run_wrk() { # CPUS THREADS PORT
    local cpus=$1 threads=$2 url="http://127.0.0.1:$3/" out
    R_RPS=NA R_P50=NA R_P99=NA R_ERR=NA
    if (( WARMUP > 0 )); then
        pin "$cpus" timeout $((WARMUP + 30)) wrk -t"$threads" -c"$CONNS" -d"${WARMUP}s" "$url" \
            >/dev/null 2>&1 || warn "warm-up wrk failed"
    fi
    if ! out=$(pin "$cpus" timeout $((DUR + 30)) \
        wrk -t"$threads" -c"$CONNS" -d"${DUR}s" --latency "$url" 2>&1); then
        warn "wrk failed:"$'\n'"$out"
        return 0
    fi
    R_RPS=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    R_P50=$(to_ms "$(awk '$1 == "50%" { print $2; exit }' <<<"$out")")
    R_P99=$(to_ms "$(awk '$1 == "99%" { print $2; exit }' <<<"$out")")
    R_ERR=$(awk '/Socket errors:/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
                 /Non-2xx or 3xx responses:/ { e += $5 }
                 END { print e + 0 }' <<<"$out")
    R_RPS=${R_RPS:-NA}
}

run_churn() { # CPUS PORT K
    local cpus=$1 url="http://127.0.0.1:$2/" k=$3 out
    R_RPS=NA R_P50=NA R_P99=NA R_ERR=NA
    if (( WARMUP > 0 )); then
        pin "$cpus" timeout $((WARMUP + 30)) "$CHURN_BIN" --url "$url" --connections "$CONNS" \
            --requests-per-conn "$k" --duration "$WARMUP" >/dev/null 2>&1 || warn "warm-up churn failed"
    fi
    if ! out=$(pin "$cpus" timeout $((DUR + 30)) "$CHURN_BIN" --url "$url" \
        --connections "$CONNS" --requests-per-conn "$k" --duration "$DUR" 2>&1); then
        warn "churn failed: $out"
        return 0
    fi
    field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$out"; }
    R_RPS=$(field rps) R_P50=$(field p50_ms) R_P99=$(field p99_ms) R_ERR=$(field errors)
    R_RPS=${R_RPS:-NA} R_P50=${R_P50:-NA} R_P99=${R_P99:-NA} R_ERR=${R_ERR:-NA}
}

# ---------------------------------------------------------------------------------------------
# Statistics over the TSV columns: scenario round server rps p50_ms p99_ms errors

median() { # FILE SERVER COLUMN
    awk -F'\t' -v s="$2" -v c="$3" 'NR > 1 && $3 == s && $c != "NA" { print $c }' "$1" |
        sort -g |
        awk '{ a[NR] = $1 } END {
            if (NR == 0) print "NA"
            else if (NR % 2) print a[(NR + 1) / 2]
            else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.3f", a / b }'; }

total_errors() { awk -F'\t' -v s="$2" 'NR > 1 && $3 == s { if ($7 == "NA") na = 1; else e += $7 }
    END { print (na ? "NA" : e + 0) }' "$1"; }

summarize() { # SCENARIO SERVER...
    local scenario=$1; shift
    local tsv="$RESULTS_DIR/$scenario.tsv" s other
    printf '%-12s %14s %12s %12s %8s\n' server "rps(median)" "p50_ms(med)" "p99_ms(med)" errors
    for s in "$@"; do
        printf '%-12s %14s %12s %12s %8s\n' "$s" "$(median "$tsv" "$s" 4)" \
            "$(median "$tsv" "$s" 5)" "$(median "$tsv" "$s" 6)" "$(total_errors "$tsv" "$s")"
    done
    for other in "$@"; do
        [[ $other != "$CANDIDATE_NAME" ]] || continue
        printf 'ratio %s/%s: rps %s  p99 %s\n' "$CANDIDATE_NAME" "$other" \
            "$(ratio "$(median "$tsv" "$CANDIDATE_NAME" 4)" "$(median "$tsv" "$other" 4)")" \
            "$(ratio "$(median "$tsv" "$CANDIDATE_NAME" 6)" "$(median "$tsv" "$other" 6)")"
    done
}

# ---------------------------------------------------------------------------------------------
# Main

need() { command -v "$1" >/dev/null || die "$1 not found ($2)"; }
need curl "apt-get install -y curl"
need ss "apt-get install -y iproute2"
need timeout "coreutils"
if (( NCPU >= 2 )) || [[ -n $SERVER_CPUS$LOAD_CPUS$PERCORE_SERVER_CPUS ]]; then need taskset "apt-get install -y util-linux"; fi
for s in "${SCENARIOS[@]}"; do
    case $s in
        keepalive | percore | peers) need wrk "apt-get install -y wrk" ;;
    esac
    [[ $s != percore ]] || need "$NGINX_BIN" "apt-get install -y nginx-light"
done

if [[ $NO_BUILD != 1 ]]; then
    if (( CANDIDATE_OVERRIDDEN )); then
        cargo build --release -p portcullis-benches
    else
        cargo build --release -p portcullis-benches -p hardened
    fi
    if [[ " ${SCENARIOS[*]} " == *" peers "* ]]; then
        cargo build --release --locked --manifest-path benches/peers/Cargo.toml \
            --target-dir "$PEERS_TARGET_DIR"
    fi
fi
bins=("$BASELINE_BIN" "$CHURN_BIN" "$CANDIDATE_BIN")
[[ " ${SCENARIOS[*]} " != *" peers "* ]] || bins+=("$AXUM_BIN" "$ACTIX_BIN")
for bin in "${bins[@]}"; do
    [[ -x $bin ]] || die "$bin is missing; build it or set the matching *_BIN variable"
done
mkdir -p "$RESULTS_DIR"

echo "# portcullis load benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $NCPU cores, rounds=$ROUNDS dur=${DUR}s warmup=${WARMUP}s conns=$CONNS"
echo "# candidate: $CANDIDATE_NAME = $CANDIDATE_BIN $CANDIDATE_ARGS"
echo "# single-worker scenarios: server cpus '${SERVER_CPUS:-any}', load cpus '${LOAD_CPUS:-any}'"
echo "# percore: $PERCORE_CORES cores, server cpus '${PERCORE_SERVER_CPUS:-any}', load cpus '${PERCORE_LOAD_CPUS:-any}'"

for scenario in "${SCENARIOS[@]}"; do
    case $scenario in
        keepalive) servers=(baseline "$CANDIDATE_NAME")
            desc="wrk -t1 -c$CONNS -d${DUR}s, 1 server worker" ;;
        churn1) servers=(baseline "$CANDIDATE_NAME")
            desc="churn C=$CONNS K=1 for ${DUR}s, 1 server worker" ;;
        churn10) servers=(baseline "$CANDIDATE_NAME")
            desc="churn C=$CONNS K=10 for ${DUR}s, 1 server worker" ;;
        churn1-mt) servers=(baseline "$CANDIDATE_NAME")
            desc="churn C=$CONNS K=1 for ${DUR}s, $NCPU server workers, unpinned" ;;
        churn10-mt) servers=(baseline "$CANDIDATE_NAME")
            desc="churn C=$CONNS K=10 for ${DUR}s, $NCPU server workers, unpinned" ;;
        peers) servers=(baseline "$CANDIDATE_NAME" "${PEERS[@]}")
            desc="wrk -t1 -c$CONNS -d${DUR}s, 1 server worker, against the peers" ;;
        percore) servers=(nginx "$CANDIDATE_NAME" baseline)
            desc="wrk -t$PERCORE_WRK_THREADS -c$CONNS -d${DUR}s, $PERCORE_CORES cores (${PERCORE_FLAG:-no per-core flag})" ;;
    esac
    tsv="$RESULTS_DIR/$scenario.tsv"
    printf 'scenario\tround\tserver\trps\tp50_ms\tp99_ms\terrors\n' >"$tsv"
    echo
    echo "== $scenario: $desc"
    n=${#servers[@]}
    for (( round = 1; round <= ROUNDS; round++ )); do
        # Rotate the start each round (A B, B A, ... ) so slow drift hits every server alike.
        for (( j = 0; j < n; j++ )); do
            name=${servers[$(( (j + round - 1) % n ))]}
            start_server "$scenario" "$name"
            case $scenario in
                keepalive | peers) run_wrk "$LOAD_CPUS" 1 "$SRV_PORT" ;;
                churn1) run_churn "$LOAD_CPUS" "$SRV_PORT" 1 ;;
                churn10) run_churn "$LOAD_CPUS" "$SRV_PORT" 10 ;;
                churn1-mt) run_churn "" "$SRV_PORT" 1 ;;
                churn10-mt) run_churn "" "$SRV_PORT" 10 ;;
                percore) run_wrk "$PERCORE_LOAD_CPUS" "$PERCORE_WRK_THREADS" "$SRV_PORT" ;;
            esac
            stop_server "$SRV_PID" "$name"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$round" "$name" \
                "$R_RPS" "$R_P50" "$R_P99" "$R_ERR" >>"$tsv"
            printf '  round %d  %-12s rps=%-10s p50_ms=%-8s p99_ms=%-8s errors=%s\n' \
                "$round" "$name" "$R_RPS" "$R_P50" "$R_P99" "$R_ERR"
        done
    done
    summarize "$scenario" "${servers[@]}"
done
echo
echo "# raw numbers: $RESULTS_DIR/<scenario>.tsv"
