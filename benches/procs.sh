# Process helpers shared by load.sh and instructions.sh (sourced, not run).
#
# procs_init NAME: a work directory under $TMPDIR and traps that stop every server started
# with `spawn` when the script exits or is interrupted.

procs_init() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-$1.XXXXXX")
    SERVER_PIDS=()
    trap procs_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

procs_cleanup() {
    local pid
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}

# pin CPUS CMD...: run CMD pinned to CPUS, or unpinned when CPUS is empty.
pin() {
    local cpus=$1; shift
    if [[ -n $cpus ]]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

# spawn CPUS LOG CMD...: start CMD in the background, pinned like `pin`, output to LOG; sets
# SRV_PID. Backgrounding a simple command (never a function, which would fork a subshell) makes
# $! the server itself: taskset, env and valgrind exec into it, so SIGTERM reaches the server.
spawn() {
    local cpus=$1 log=$2; shift 2
    if [[ -n $cpus ]]; then
        taskset -c "$cpus" "$@" >"$log" 2>&1 &
    else
        "$@" >"$log" 2>&1 &
    fi
    SRV_PID=$!
    SERVER_PIDS+=("$SRV_PID")
}

forget_pid() {
    local keep=() p
    for p in "${SERVER_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    SERVER_PIDS=("${keep[@]}")
}
