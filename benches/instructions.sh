#!/usr/bin/env bash
# portcullis instruction-count benchmark: user-space instructions per request, hardened (the candidate)
# against the bare hyper baseline, counted with callgrind. Unlike req/s, this barely moves with
# the load on a shared machine. Loopback only; every run is bounded in time.
#
#   benches/instructions.sh [SCENARIO...]   scenarios: keepalive churn1 churn10 (default: all)
#
# Each measurement starts the server under `valgrind --tool=callgrind` (everything counted, all
# threads), drives exactly N requests with `churn --max-requests`, stops the server with SIGTERM
# and reads the total Ir from the callgrind file. The same is then done with 2N requests, and
#   instructions/request = (Ir(2N) - Ir(N)) / N
# so start-up, shutdown and everything else that does not scale with the request count cancel.
# This is repeated REPEATS times (servers alternating). The summary takes the median Ir(N) and
# Ir(2N) over the repeats; the per-repeat differences show the noise (min, max, spread).
#
# Environment (defaults in brackets):
#   N [20000] requests in the smaller run (a multiple of CONNS and of 10)
#   REPEATS [3] (N, 2N) pairs per server and scenario
#   CONNS [8] keep-alive connections in keepalive (N/CONNS requests each)
#   CHURN_CONNS [1] concurrent connections in churn1 and churn10. Concurrent short connections
#             interleave their allocations in a timing-dependent order, so the glibc heap
#             layout, and with it how often realloc moves hyper's read buffer, changes from run
#             to run (hardened churn1 at 8: up to 15% apart; at 1: 0.01%)
#   SERVER_TUNABLES [glibc.cpu.hwcaps=-ERMS] GLIBC_TUNABLES for the servers ("" leaves the
#             environment alone). Callgrind counts each iteration of `rep movsb`/`rep stosb` as
#             an instruction, so glibc's ERMS memcpy counts ~1 per byte for copies of a few KiB
#             and up; without ERMS, it uses vector loops, counted as the CPU executes them
#   RUN_TIMEOUT [300] seconds allowed for one load run   STARTUP_TIMEOUT [60] seconds to wait for
#   the server (valgrind starts slowly)   STOP_TIMEOUT [60] seconds allowed for exit after SIGTERM
#   SERVER_CPUS [0]  LOAD_CPUS [1]   taskset lists (2+ cores only; nothing pinned on 1 core)
#   CANDIDATE_BIN [target/release/hardened]  CANDIDATE_NAME [hardened, or "candidate" if the
#                 binary is overridden]  CANDIDATE_ARGS [--acceptors 1, or "" if overridden]
#   VALGRIND_ARGS [] extra valgrind flags   KEEP_PROFILES [0] 1 copies the callgrind files to
#                 RESULTS_DIR/callgrind/ (for callgrind_annotate)
#   BASELINE_BIN, CHURN_BIN, RESULTS_DIR [benches/results]  NO_BUILD [0]
#
# Plumbing check without hardened (the baseline against itself; the ratio should be ~1.00):
#   REPEATS=1 CANDIDATE_BIN=target/release/baseline CANDIDATE_ARGS='--workers 1' benches/instructions.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

N=${N:-20000}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-8}
CHURN_CONNS=${CHURN_CONNS:-1}
SERVER_TUNABLES=${SERVER_TUNABLES-glibc.cpu.hwcaps=-ERMS}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-60}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BASELINE_BIN=${BASELINE_BIN:-$TARGET_DIR/release/baseline}
CHURN_BIN=${CHURN_BIN:-$TARGET_DIR/release/churn}
if [[ -n ${CANDIDATE_BIN:-} ]]; then
    CANDIDATE_OVERRIDDEN=1
    CANDIDATE_NAME=${CANDIDATE_NAME:-candidate}
    CANDIDATE_ARGS=${CANDIDATE_ARGS:-}
else
    CANDIDATE_OVERRIDDEN=0
    CANDIDATE_BIN=$TARGET_DIR/release/hardened
    CANDIDATE_NAME=${CANDIDATE_NAME:-hardened}
    CANDIDATE_ARGS=${CANDIDATE_ARGS---acceptors 1}
fi
VALGRIND_ARGS=${VALGRIND_ARGS:-}
KEEP_PROFILES=${KEEP_PROFILES:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/benches/results}
NO_BUILD=${NO_BUILD:-0}
NCPU=$(nproc)

ALL_SCENARIOS=(keepalive churn1 churn10)

die() { echo "instructions.sh: $*" >&2; exit 1; }
warn() { echo "instructions.sh: warning: $*" >&2; }

for v in N REPEATS CONNS CHURN_CONNS RUN_TIMEOUT STARTUP_TIMEOUT STOP_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
(( N % CONNS == 0 && N % 10 == 0 )) ||
    die "N=$N must be a multiple of CONNS=$CONNS and of 10, so every connection gets the same share"
(( RUN_TIMEOUT <= 3600 )) || die "RUN_TIMEOUT is capped at 3600 s (churn's --duration limit)"
[[ $CANDIDATE_NAME != baseline ]] || die "CANDIDATE_NAME must differ from 'baseline'"

SCENARIOS=()
for arg in "$@"; do
    case $arg in
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        keepalive | churn1 | churn10) SCENARIOS+=("$arg") ;;
        *) die "unknown scenario '$arg' (want: ${ALL_SCENARIOS[*]})" ;;
    esac
done
(( ${#SCENARIOS[@]} )) || SCENARIOS=("${ALL_SCENARIOS[@]}")

# Pinning, as in load.sh: the server (one worker) on SERVER_CPUS, the load on LOAD_CPUS.
if (( NCPU >= 2 )); then
    SERVER_CPUS=${SERVER_CPUS:-0}
    LOAD_CPUS=${LOAD_CPUS:-1}
else
    SERVER_CPUS=${SERVER_CPUS:-}
    LOAD_CPUS=${LOAD_CPUS:-}
fi

# ---------------------------------------------------------------------------------------------
# Processes and cleanup

# shellcheck source=procs.sh
source "$ROOT/benches/procs.sh"
procs_init instr

# stop_server PID NAME: SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL. Returns non-zero unless
# the server exited by itself with status 0 (only then is the callgrind file complete).
stop_server() {
    local pid=$1 name=$2 rc=0 ticks=$((STOP_TIMEOUT * 10))
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq "$ticks"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        warn "$name (pid $pid) still running ${STOP_TIMEOUT}s after SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    forget_pid "$pid"
    (( rc == 0 )) || { warn "$name exited with status $rc after SIGTERM"; return 1; }
}

# start_server NAME OUT: start NAME under callgrind, writing OUT; sets SRV_PID, SRV_PORT, SRV_LOG.
start_server() {
    local name=$1 out=$2 line deadline=$((SECONDS + STARTUP_TIMEOUT)) cmd vg_extra=()
    # shellcheck disable=SC2206 # lists of flags, split on purpose
    vg_extra=($VALGRIND_ARGS)
    if [[ $name == baseline ]]; then
        cmd=("$BASELINE_BIN" --listen 127.0.0.1:0 --workers 1)
    else
        local extra=()
        # shellcheck disable=SC2206
        extra=($CANDIDATE_ARGS)
        cmd=("$CANDIDATE_BIN" --listen 127.0.0.1:0 "${extra[@]}")
    fi
    SRV_LOG="$WORK/$name.log"
    local envs=(TOKIO_WORKER_THREADS=1)
    [[ -z $SERVER_TUNABLES ]] || envs+=(GLIBC_TUNABLES="$SERVER_TUNABLES")
    # RUST_LOG would change what hardened logs, and so what it executes.
    spawn "$SERVER_CPUS" "$SRV_LOG" env -u RUST_LOG "${envs[@]}" \
        valgrind --tool=callgrind --callgrind-out-file="$out" "${vg_extra[@]}" "${cmd[@]}"
    while :; do
        if line=$(grep -m1 -o 'listening on http://[0-9.]*:[0-9]*' "$SRV_LOG"); then
            SRV_PORT=${line##*:}
            break
        fi
        if ! kill -0 "$SRV_PID" 2>/dev/null; then
            wait "$SRV_PID" 2>/dev/null || true
            forget_pid "$SRV_PID"
            die "$name exited during start-up (${cmd[*]}):$(printf '\n'; tail -n 20 "$SRV_LOG")"
        fi
        if (( SECONDS >= deadline )); then
            stop_server "$SRV_PID" "$name" || true
            die "$name printed no 'listening on' line within ${STARTUP_TIMEOUT}s (${cmd[*]})"
        fi
        sleep 0.05
    done
    # One request outside the measured load; it is in both the N and the 2N run, so it cancels.
    # Retried until the start-up deadline: under valgrind on a loaded machine the first answer
    # can take longer than one curl is given.
    local answer=""
    until answer=$(curl -s --max-time 20 "http://127.0.0.1:$SRV_PORT/" 2>/dev/null) && [[ $answer == hello ]]; do
        (( SECONDS < deadline )) && kill -0 "$SRV_PID" 2>/dev/null ||
            die "$name on port $SRV_PORT does not answer GET / with hello (last answer: '${answer:0:80}')"
        sleep 0.2
    done
}

# total_ir FILE: the total Ir of a callgrind file (its `totals:` line, else `summary:`).
total_ir() {
    awk '$1 == "totals:" { t = $2 } $1 == "summary:" { s = $2 }
         END { if (t != "") print t; else if (s != "") print s; else print "NA" }' "$1"
}

# measure SCENARIO NAME COUNT TAG: one server run with exactly COUNT requests; sets M_IR (total
# Ir, or NA when anything went wrong).
measure() {
    local scenario=$1 name=$2 count=$3 tag=$4 k conns=$CHURN_CONNS out churn_out ok=1
    case $scenario in
        keepalive) k=$((count / CONNS)) conns=$CONNS ;;
        churn1) k=1 ;;
        churn10) k=10 ;;
    esac
    out="$WORK/callgrind.$scenario.$name.$tag.out"
    M_IR=NA
    start_server "$name" "$out"
    if ! churn_out=$(pin "$LOAD_CPUS" timeout $((RUN_TIMEOUT + 60)) "$CHURN_BIN" \
        --url "http://127.0.0.1:$SRV_PORT/" --connections "$conns" --requests-per-conn "$k" \
        --max-requests "$count" --duration "$RUN_TIMEOUT" --threads 1 --timeout 30 2>&1); then
        warn "churn failed against $name: $churn_out"
        ok=0
    elif [[ $churn_out != *"requests=$count errors=0 "* ]]; then
        warn "$name: wanted exactly $count requests and no errors, churn says: $churn_out"
        ok=0
    fi
    stop_server "$SRV_PID" "$name" || ok=0
    if (( ok )) && [[ -s $out ]]; then
        M_IR=$(total_ir "$out")
    elif (( ok )); then
        warn "$name wrote no callgrind file:$(printf '\n'; tail -n 20 "$SRV_LOG")"
    fi
    if [[ $KEEP_PROFILES == 1 && -s $out ]]; then
        mkdir -p "$RESULTS_DIR/callgrind"
        cp "$out" "$RESULTS_DIR/callgrind/"
    fi
    rm -f "$out"
}

# ---------------------------------------------------------------------------------------------
# Statistics over the TSV columns: scenario repeat server n ir_n ir_2n ir_per_request

stat() { # FILE SERVER COLUMN median|min|max
    awk -F'\t' -v s="$2" -v c="$3" 'NR > 1 && $3 == s && $c != "NA" { print $c }' "$1" |
        sort -g |
        awk -v what="$4" '{ a[NR] = $1 } END {
            if (NR == 0) print "NA"
            else if (what == "min") print a[1]
            else if (what == "max") print a[NR]
            else if (NR % 2) print a[(NR + 1) / 2]
            else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# per_request FILE SERVER: (median Ir(2N) - median Ir(N)) / N. Taking the medians first means one
# odd run moves the result far less than it moves its own pair's difference.
per_request() {
    awk -v a="$(stat "$1" "$2" 5 median)" -v b="$(stat "$1" "$2" 6 median)" -v n="$N" 'BEGIN {
        if (a == "NA" || b == "NA") print "NA"; else printf "%.1f", (b - a) / n }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.3f", a / b }'; }

spread() { # MIN MAX REFERENCE: (max - min) / reference in percent
    awk -v lo="$1" -v hi="$2" -v m="$3" 'BEGIN {
        if (lo == "NA" || hi == "NA" || m == "NA" || m == 0) print "NA"
        else printf "%.2f%%", (hi - lo) / m * 100 }'
}

summarize() { # SCENARIO
    local tsv="$RESULTS_DIR/instructions-$1.tsv" s per lo hi
    printf '%-12s %14s %14s %14s %12s %12s %8s\n' server "Ir(N) med" "Ir(2N) med" "instr/req" \
        "repeat min" "repeat max" spread
    for s in baseline "$CANDIDATE_NAME"; do
        per=$(per_request "$tsv" "$s")
        lo=$(stat "$tsv" "$s" 7 min) hi=$(stat "$tsv" "$s" 7 max)
        printf '%-12s %14s %14s %14s %12s %12s %8s\n' "$s" "$(stat "$tsv" "$s" 5 median)" \
            "$(stat "$tsv" "$s" 6 median)" "$per" "$lo" "$hi" "$(spread "$lo" "$hi" "$per")"
    done
    printf 'ratio %s/baseline: instructions/request %s\n' "$CANDIDATE_NAME" \
        "$(ratio "$(per_request "$tsv" "$CANDIDATE_NAME")" "$(per_request "$tsv" baseline)")"
}

# ---------------------------------------------------------------------------------------------
# Main

need() { command -v "$1" >/dev/null || die "$1 not found ($2)"; }
need valgrind "apt-get install -y valgrind"
need curl "apt-get install -y curl"
need timeout "coreutils"
if [[ -n $SERVER_CPUS$LOAD_CPUS ]]; then need taskset "apt-get install -y util-linux"; fi

if [[ $NO_BUILD != 1 ]]; then
    if (( CANDIDATE_OVERRIDDEN )); then
        cargo build --release -p portcullis-benches
    else
        cargo build --release -p portcullis-benches -p hardened
    fi
fi
for bin in "$BASELINE_BIN" "$CHURN_BIN" "$CANDIDATE_BIN"; do
    [[ -x $bin ]] || die "$bin is missing; build it or set the matching *_BIN variable"
done
mkdir -p "$RESULTS_DIR"

echo "# portcullis instruction benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(valgrind --version) callgrind, N=$N and 2N=$((2 * N)) requests, repeats=$REPEATS conns=$CONNS (churn*: $CHURN_CONNS)"
echo "# candidate: $CANDIDATE_NAME = $CANDIDATE_BIN $CANDIDATE_ARGS (TOKIO_WORKER_THREADS=1)"
echo "# baseline: $BASELINE_BIN --workers 1; server cpus '${SERVER_CPUS:-any}', load cpus '${LOAD_CPUS:-any}'"
echo "# servers run with GLIBC_TUNABLES=${SERVER_TUNABLES:-${GLIBC_TUNABLES:-(unset)}}"
echo "# instructions/request = (Ir(2N) - Ir(N)) / N, user space, all server threads"

failed=0
servers=(baseline "$CANDIDATE_NAME")
for scenario in "${SCENARIOS[@]}"; do
    case $scenario in
        keepalive) desc="$CONNS keep-alive connections, N/$CONNS requests each" ;;
        churn1) desc="one request per connection, $CHURN_CONNS at a time" ;;
        churn10) desc="10 requests per connection, $CHURN_CONNS at a time" ;;
    esac
    tsv="$RESULTS_DIR/instructions-$scenario.tsv"
    printf 'scenario\trepeat\tserver\tn\tir_n\tir_2n\tir_per_request\n' >"$tsv"
    echo
    echo "== $scenario: $desc"
    for (( rep = 1; rep <= REPEATS; rep++ )); do
        # Alternate which server goes first, as load.sh does.
        for (( j = 0; j < 2; j++ )); do
            name=${servers[$(( (j + rep - 1) % 2 ))]}
            measure "$scenario" "$name" "$N" "r$rep-n"
            ir_n=$M_IR
            measure "$scenario" "$name" $((2 * N)) "r$rep-2n"
            ir_2n=$M_IR
            per=$(awk -v a="$ir_n" -v b="$ir_2n" -v n="$N" 'BEGIN {
                if (a == "NA" || b == "NA") print "NA"; else printf "%.1f", (b - a) / n }')
            [[ $per != NA ]] || failed=1
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$rep" "$name" "$N" "$ir_n" "$ir_2n" \
                "$per" >>"$tsv"
            printf '  repeat %d  %-12s Ir(N)=%-13s Ir(2N)=%-13s instr/req=%s\n' \
                "$rep" "$name" "$ir_n" "$ir_2n" "$per"
        done
    done
    summarize "$scenario"
done
echo
echo "# raw numbers: $RESULTS_DIR/instructions-<scenario>.tsv"
(( failed == 0 )) || die "some measurements failed (NA above); the numbers are incomplete"
