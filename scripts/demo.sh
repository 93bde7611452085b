#!/usr/bin/env bash
# Shows enforcement live: two cgroups bound to two trust domains, a database-like listener in
# prod, and connections from staging and prod: one refused with EPERM, the edge-allowed ones
# connecting; `enforcer why` explaining the refusal and `enforcer events` listing every
# refusal and crossing. Then the daemon is killed with SIGKILL and enforcement stays.
# Everything the demo creates (cgroups, pins, processes) is removed at the end, even on failure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
enforcer="$root/target/release/enforcer"
probe="$root/target/release/enforcer-probe"
cgroup_mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
demo_cgroup="$cgroup_mount/enforcer-demo"
pins=/sys/fs/bpf/enforcer-demo
work=$(mktemp -d /tmp/enforcer-demo.XXXXXX)
socket="$work/control.sock"
pids=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
    exec 2>/dev/null
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    "$enforcer" teardown --pin-dir "$pins" >/dev/null 2>&1 || true
    echo 1 > "$demo_cgroup/cgroup.kill" 2>/dev/null || true
    for dir in prod staging ""; do
        for _ in $(seq 50); do rmdir "$demo_cgroup/$dir" 2>/dev/null && break; sleep 0.02; done
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Runs the probe inside a cgroup: the subshell moves itself there, then execs.
in_cgroup() { local cg=$1; shift; (echo "$BASHPID" > "$demo_cgroup/$cg/cgroup.procs" && exec "$@"); }

try() {
    local from=$1 addr=$2 port=$3
    printf '  %-8s -> prod %s:%s  ' "$from" "$addr" "$port"
    in_cgroup "$from" "$probe" connect "$addr" "$port" | sed 's/^error 1$/refused: EPERM (Operation not permitted)/; s/^connected hi$/connected, prod said "hi"/'
}

mkdir -p "$demo_cgroup/prod" "$demo_cgroup/staging"

say "policy (policies/demo.yaml)"
grep -v '^#' "$root/policies/demo.yaml"
"$enforcer" policy check "$root/policies/demo.yaml"

say "starting the daemon, enforcing on $demo_cgroup"
"$enforcer" daemon --policy "$root/policies/demo.yaml" --cgroup-root /enforcer-demo \
    --pin-dir "$pins" --socket "$socket" --state-dir "$work/state" 2> "$work/daemon.log" &
pids+=($!)
# The daemon logs "control socket" once enforcement is in place and it answers requests.
timeout 30 grep -q "control socket" <(tail -f "$work/daemon.log") || { cat "$work/daemon.log"; exit 1; }
sed 's/^/  /' "$work/daemon.log"

say "prod runs a database on 15432 and an admin API on 18080 (IPv4 and IPv6)"
for port in 15432 18080; do
    for addr in 127.0.0.1 ::1; do
        out="$work/listener-$port-${addr//:/_}"
        in_cgroup prod "$probe" listen "$addr" "$port" > "$out" &
        pids+=($!)
        # The probe prints "listening" once it accepts connections.
        timeout 10 grep -q listening <(tail -f "$out") || { echo "listener on $addr:$port failed"; exit 1; }
    done
done

say "connections"
try staging 127.0.0.1 15432
try staging ::1 15432
try staging 127.0.0.1 18080
try staging ::1 18080
try prod 127.0.0.1 18080

say "why was staging -> 127.0.0.1:18080 refused? (answered from the live kernel maps)"
"$enforcer" why --from-cgroup /enforcer-demo/staging --to 127.0.0.1:18080 --socket "$socket" | sed 's/^/  /'

say "status"
"$enforcer" status --socket "$socket" | sed 's/^/  /'

say "decision events: every refusal and every domain crossing (also in state/events.jsonl)"
"$enforcer" events --socket "$socket" | sed 's/^/  /'

say "killing the daemon with SIGKILL: enforcement stays in the kernel"
kill -9 "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
try staging 127.0.0.1 18080
try staging 127.0.0.1 15432

say "enforcer teardown (the only way enforcement is removed)"
"$enforcer" teardown --pin-dir "$pins"
try staging 127.0.0.1 18080
