#!/usr/bin/env bash
# Small-file uploads into volumes: uploads/s, CPU seconds per 1,000 uploads by process, and
# (with STRACE=1) fsync-family calls per upload, on one node and on a two-node group (every
# 201 durable on both nodes). Everything (nodes, tracker, load generator) runs on this machine.
#
#   bench/volumes.sh [REQUESTS] [CONNECTIONS] [SIZE]     (default 30000 requests, 32, 5KB)
#   STRACE=1 bench/volumes.sh                            also count fsync calls (slower)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
requests=${1:-30000}
conns=${2:-32}
size=${3:-5KB}

bench_setup volumes
up() { for _ in $(seq 200); do curl -sf "$1/healthz" >/dev/null && return; sleep 0.05; done; echo "$1 did not start" >&2; exit 1; }
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
export SLUICE_CLUSTER_SECRET=bench-secret

# `measure NAME URL PID...`: one bench run against URL, with the CPU the PIDs used during it.
measure() {
  local name=$1 url=$2; shift 2
  local before=() p i=0 result
  for p in "$@"; do before+=("$(cpu "$p")"); done
  if [ "${STRACE:-0}" = 1 ]; then
    for p in "$@"; do strace -f -c -e trace=fsync,fdatasync,sync_file_range -p "$p" -o "$work/strace.$p" 2>/dev/null & done
    sleep 1
  fi
  result=$("$SLUICE" bench upload --server "$url" -c "$conns" -n "$requests" --size "$size" --json)
  local cpus=()
  for p in "$@"; do cpus+=("$(python3 -c "print($(cpu "$p") - ${before[$i]})")"); i=$((i + 1)); done
  local syncs=0
  if [ "${STRACE:-0}" = 1 ]; then
    pkill -INT -f "strace -f -c -e trace=fsync" || true; sleep 1
    for p in "$@"; do
      syncs=$((syncs + $(awk '$NF ~ /^(fsync|fdatasync|sync_file_range)$/ {n += $4} END {print n + 0}' "$work/strace.$p")))
    done
  fi
  python3 - "$name" "$result" "$requests" "$syncs" "${cpus[@]}" <<'PY'
import json, sys
name, r, n, syncs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cpus = [float(c) for c in sys.argv[5:]]
line = f"{name:<22} {r['requests_per_sec']:8.0f} uploads/s  p99 {r['p99_ms']:5.1f} ms  CPU s per 1000: " + " + ".join(f"{c * 1000 / n:.2f}" for c in cpus)
if syncs:
    line += f"  fsync calls per upload {syncs / n:.2f}"
if r["failed"]:
    line += f"  ({r['failed']} failed: {r['first_error']})"
print(line)
PY
}

single="http://127.0.0.1:$(free_port)"
"$SLUICE" serve --data "$work/single" --http "${single#http://}" 2>"$work/single.log" & single_pid=$!; pids+=($single_pid)
tracker="http://127.0.0.1:$(free_port)"
"$SLUICE" tracker --http "${tracker#http://}" --data "$work/tracker" 2>"$work/tracker.log" & pids+=($!)
up "$single"; up "$tracker"
a="http://127.0.0.1:$(free_port)"; b="http://127.0.0.1:$(free_port)"
"$SLUICE" storage --group g1 --tracker "$tracker" --http "${a#http://}" --data "$work/a" --heartbeat-interval-ms 200 2>"$work/a.log" & a_pid=$!; pids+=($a_pid)
"$SLUICE" storage --group g1 --tracker "$tracker" --http "${b#http://}" --data "$work/b" --heartbeat-interval-ms 200 2>"$work/b.log" & b_pid=$!; pids+=($b_pid)
up "$a"; up "$b"
for _ in $(seq 200); do
  [ "$(curl -sf "$tracker/v1/cluster" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(sum(n["state"]=="active" for g in v["groups"] for n in g["nodes"]))')" = 2 ] && break
  sleep 0.05
done

echo "$requests uploads of $size over $conns connections; $(nproc) cores; CPU columns: the node(s), in order"
for round in 1 2 3; do
  measure "one node (round $round)" "$single" "$single_pid"
  measure "two-node (round $round)" "$a" "$a_pid" "$b_pid"
done
metric() { curl -sf "$1/metrics" | awk -v n="$2" '$1 == n {print $2}'; }
for node in "$single" "$a" "$b"; do
  files=$(metric "$node" sluice_store_files); batches=$(metric "$node" sluice_volume_batches_total); records=$(metric "$node" sluice_volume_batch_records_total)
  echo "$node: $files files, $(python3 -c "print(f'{$records / max($batches, 1):.1f}')") records per volume append"
done
