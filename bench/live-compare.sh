#!/usr/bin/env bash
# RTMP fan-out against nginx-rtmp in the same run: `sluice serve --rtmp` and nginx with
# libnginx-mod-rtmp (one worker), each fed one generated stream by `sluice bench live` and
# played by N RTMP players; the server's CPU time is read from /proc around each run.
# Prints CPU per player, players per core, and the ratio; and publish-to-player latency for
# RTMP and HTTP-FLV.
#
#   bench/live-compare.sh [SECONDS] [BITRATE] [N...]      defaults: 10 600000 100 500 1000
#
# Needs nginx and libnginx-mod-rtmp (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
bitrate=${2:-600000}
shift $(( $# > 2 ? 2 : $# ))
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(100 500 1000)

source bench/lib.sh
ensure_tools nginx=nginx-light
[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || install_packages libnginx-mod-rtmp
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ulimit -n 65536 2>/dev/null || true

cargo build --release --quiet -p sluice
SLUICE="${CARGO_TARGET_DIR:-$PWD/target}/release/sluice"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
hport=$(free_port); sport=$(free_port); nport=$(free_port)

"$SLUICE" serve --data "$work/sluice" --http "127.0.0.1:$hport" --rtmp "127.0.0.1:$sport" 2>"$work/sluice.log" &
spid=$!; pids+=($spid)

cat > "$work/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 65536; }
rtmp {
  server {
    listen 127.0.0.1:$nport;
    chunk_size 4096;
    application live { live on; }
  }
}
CONF
"$NGINX" -c "$work/nginx.conf" -p "$work" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$hport/healthz" >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do [ -s "$work/nginx.pid" ] && break; sleep 0.1; done
nworker=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)

# Clock ticks of user+system CPU a process has used.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # server-name pid port stream n
  local before after out
  before=$(ticks "$2")
  out=$("$SLUICE" bench live --rtmp "rtmp://127.0.0.1:$3/live/$4" --players "$5" \
        --duration "$seconds" --bitrate "$bitrate" --json) || true
  after=$(ticks "$2")
  python3 - "$1" "$5" "$before" "$after" "$hz" "$out" <<'PY'
import json, sys
name, n, before, after, hz, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
r = json.loads(out) if out.strip() else {}
cpu = (after - before) / hz
secs = r.get("seconds", 0) + 2  # the players' time plus the publisher's warm-up
per_core = n / (cpu / secs) if cpu > 0 else float("inf")
print(f"{name:<7} N={n:<5} playing={r.get('playing', 0):<5} cpu={cpu:6.2f}s over {secs:5.1f}s "
      f"cpu/player={1000*cpu/secs/n:6.3f} ms/s  players/core={per_core:8.0f}  "
      f"frames/player={r.get('frames_per_player', 0):6.1f}  p50={r.get('latency_p50_ms', 0):.1f}ms "
      f"p99={r.get('latency_p99_ms', 0):.1f}ms  err={r.get('first_error')}")
print(f"RESULT {name} {n} {per_core}")
PY
}

echo "RTMP fan-out: ${seconds}s per run at ${bitrate} bit/s, cores=$(nproc)"
results=$(mktemp)
for n in "${counts[@]}"; do
  run nginx "$nworker" "$nport" "n$n" "$n" | tee -a "$results" | grep -v '^RESULT'
  run sluice "$spid" "$sport" "s$n" "$n" | tee -a "$results" | grep -v '^RESULT'
done
echo
python3 - "$results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.startswith("RESULT")]
by = {}
for _, name, n, per_core in rows:
    by.setdefault(int(n), {})[name] = float(per_core)
print("players per core (sluice / nginx-rtmp):")
for n in sorted(by):
    s, g = by[n].get("sluice", 0), by[n].get("nginx", 0)
    print(f"  N={n:<5} sluice {s:8.0f}  nginx-rtmp {g:8.0f}  ratio {s / g if g else float('nan'):.2f}x")
PY

echo
echo "publish-to-player latency, 50 players:"
"$SLUICE" bench live --rtmp "rtmp://127.0.0.1:$sport/live/lat" --players 50 --duration "$seconds" --bitrate "$bitrate" | tail -1 | sed 's/^/  sluice RTMP    /'
"$SLUICE" bench live --rtmp "rtmp://127.0.0.1:$sport/live/latf" --flv "http://127.0.0.1:$hport/live/live/latf.flv" \
  --protocol flv --players 50 --duration "$seconds" --bitrate "$bitrate" | tail -1 | sed 's/^/  sluice HTTP-FLV/'
"$SLUICE" bench live --rtmp "rtmp://127.0.0.1:$nport/live/latn" --players 50 --duration "$seconds" --bitrate "$bitrate" | tail -1 | sed 's/^/  nginx-rtmp RTMP/'
