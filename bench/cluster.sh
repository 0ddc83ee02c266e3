#!/usr/bin/env bash
# Upload and download throughput through a two-node group (every upload fsynced on both nodes
# before its 201) against a single node, side by side.
#
#   bench/cluster.sh [REQUESTS] [CONNECTIONS]      (default 20000 requests, 32 connections)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
requests=${1:-20000}
conns=${2:-32}

bench_setup cluster
up() { for _ in $(seq 200); do curl -sf "$1/healthz" >/dev/null && return; sleep 0.05; done; echo "$1 did not start" >&2; exit 1; }
export SLUICE_CLUSTER_SECRET=bench-secret

single="http://127.0.0.1:$(free_port)"
"$SLUICE" serve --data "$work/single" --http "${single#http://}" 2>"$work/single.log" & pids+=($!)
tracker="http://127.0.0.1:$(free_port)"
"$SLUICE" tracker --http "${tracker#http://}" --data "$work/tracker" 2>"$work/tracker.log" & pids+=($!)
up "$single"; up "$tracker"
a="http://127.0.0.1:$(free_port)"; b="http://127.0.0.1:$(free_port)"
"$SLUICE" storage --group g1 --tracker "$tracker" --http "${a#http://}" --data "$work/a" --heartbeat-interval-ms 200 2>"$work/a.log" & pids+=($!)
"$SLUICE" storage --group g1 --tracker "$tracker" --http "${b#http://}" --data "$work/b" --heartbeat-interval-ms 200 2>"$work/b.log" & pids+=($!)
up "$a"; up "$b"
for _ in $(seq 200); do
  [ "$(curl -sf "$tracker/v1/cluster" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(sum(n["state"]=="active" for g in v["groups"] for n in g["nodes"]))')" = 2 ] && break
  sleep 0.05
done

run() { "$SLUICE" bench "$1" --server "$2" -c "$conns" -n "$requests" --size "$3" --files 2000 --json || true; }
field() {
  python3 - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
text = f"{r['requests_per_sec']:.0f}/s p99 {r['p99_ms']:.1f} ms"
if r["failed"]:
    text += f" ({r['failed']} failed: {r['first_error']})"
print(text)
PY
}

printf '%-16s %-28s %-28s\n' "" "single node" "two-node group (fsync on both)"
for size in 5KB 64KiB; do
  for mode in upload download; do
    s=$(run "$mode" "$single" "$size"); p=$(run "$mode" "$a" "$size")
    printf '%-16s %-28s %-28s\n' "$mode $size" "$(field "$s")" "$(field "$p")"
  done
done
# Read-after-write from the other node never fails: count files on each.
files() { curl -sf "$1/metrics" | awk '/^sluice_store_files / {print $2}'; }
echo "files on a: $(files "$a")  files on b: $(files "$b")"
