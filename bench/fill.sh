#!/usr/bin/env bash
# Does the store slow down as it fills? Measures upload and download rates of 5 KB files on an
# empty `sluice serve`, fills it with FILES more, measures again, and prints the change.
#
#   bench/fill.sh [FILES] [CONNECTIONS]      (default 1000000 files, 32 connections)
#
# Also reports the disk the store takes against the bytes it holds, and how many files its data
# directory has (small files go into volumes, so that count does not grow with the files).
# Needs about 5.5 GB of disk per million files (volumes and index).
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-1000000}
conns=${2:-32}
probe=20000

cargo build --release --quiet -p sluice
SLUICE="${CARGO_TARGET_DIR:-$PWD/target}/release/sluice"
work=$(mktemp -d "${SLUICE_BENCH_DIR:-${CARGO_TARGET_DIR:-$PWD/target}}/fill.XXXXXX")
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
"$SLUICE" serve --data "$work/data" --http "127.0.0.1:$port" 2>"$work/serve.log" &
pid=$!
for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done

probe_rates() {
  local up down
  up=$("$SLUICE" bench upload --server "$url" -c "$conns" -n "$probe" --size 5KB --json)
  down=$("$SLUICE" bench download --server "$url" -c "$conns" -n "$probe" --size 5KB --files 5000 --json)
  python3 -c "import json,sys; u=json.loads(sys.argv[1]); d=json.loads(sys.argv[2]); print(u['requests_per_sec'], d['requests_per_sec'], u['p99_ms'], d['p99_ms'])" "$up" "$down"
}

read -r up0 down0 up0p99 down0p99 < <(probe_rates)
printf 'empty store:        upload %8.0f/s (p99 %.1f ms)  download %8.0f/s (p99 %.1f ms)\n' "$up0" "$up0p99" "$down0" "$down0p99"
started=$(date +%s)
fill=$("$SLUICE" bench upload --server "$url" -c "$conns" -n "$files" --size 5KB --json)
python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(f\"filled {r['completed']} files ({r['failed']} failed) at {r['requests_per_sec']:.0f}/s in {r['seconds']:.0f} s\")" "$fill"
held=$(curl -sf "$url/metrics" | awk '/^sluice_store_files / {print $2}')
read -r up1 down1 up1p99 down1p99 < <(probe_rates)
printf 'after %8d files: upload %8.0f/s (p99 %.1f ms)  download %8.0f/s (p99 %.1f ms)\n' "$held" "$up1" "$up1p99" "$down1" "$down1p99"
python3 -c "import sys; u0,d0,u1,d1=map(float,sys.argv[1:]); print(f'change: upload {u1/u0:.2f}x  download {d1/d0:.2f}x  (target: within 10%, no worse than 0.90x)')" "$up0" "$down0" "$up1" "$down1"
stored=$(curl -sf "$url/metrics" | awk '/^sluice_store_bytes / {print $2}')
used=$(du -sB1 "$work/data" | awk '{print $1}')
entries=$(find "$work/data" | wc -l)
python3 -c "import sys; s,u=map(int,sys.argv[1:3]); print(f'disk used: {u/1e9:.2f} GB for {s/1e9:.2f} GB of files: {u/s:.3f}x (blocks allocated, index included; target at most 1.05x)')" "$stored" "$used"
echo "files and directories in the data directory: $entries"
echo "elapsed: $(( $(date +%s) - started )) s"
