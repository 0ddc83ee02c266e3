#!/usr/bin/env bash
# Serves the same 64 KiB and 1 MiB files from nginx (sendfile on, access_log off) and from
# `sluice serve`, drives both with wrk in the same run, alternating, and prints the ratios.
#
#   bench/nginx-compare.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Needs nginx and wrk (installed with apt-get when missing). Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-8}
conns=${3:-32}

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet -p sluice
SLUICE=target/release/sluice
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sport=$(free_port); nport=$(free_port)

"$SLUICE" serve --data "$work/sluice" --http "127.0.0.1:$sport" 2>"$work/sluice.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$sport/healthz" >/dev/null && break; sleep 0.1; done

mkdir -p "$work/www/v1/files/g1"
declare -A path
for size in 64KiB 1MiB; do
  case $size in 64KiB) bytes=65536;; 1MiB) bytes=1048576;; esac
  head -c "$bytes" /dev/urandom > "$work/$size.bin"
  id=$("$SLUICE" upload "$work/$size.bin" --server "http://127.0.0.1:$sport")
  cp "$work/$size.bin" "$work/www/v1/files/$id"
  path[$size]="/v1/files/$id"
done

cat > "$work/nginx.conf" <<CONF
worker_processes $(nproc);
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$nport;
    root $work/www;
  }
}
CONF
chmod -R a+rX "$work"
"$NGINX" -c "$work/nginx.conf" -p "$work" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$nport${path[64KiB]}" -o /dev/null && break; sleep 0.1; done

for size in 64KiB 1MiB; do
  cmp <(curl -sf "http://127.0.0.1:$nport${path[$size]}") <(curl -sf "http://127.0.0.1:$sport${path[$size]}") \
    || { echo "servers disagree on the $size file" >&2; exit 1; }
done

# wrk prints "Requests/sec: N" and "Transfer/sec: N.NNMB"; keep requests/s and MB/s.
measure() {
  local out rps tps
  out=$(wrk -t1 -c"$conns" -d"${seconds}s" --latency "$1")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  tps=$(awk '/^Transfer\/sec:/ {v=$2; if (v ~ /GB$/) m=1024; else if (v ~ /MB$/) m=1; else if (v ~ /KB$/) m=1/1024; else m=1/1048576; sub(/[A-Z]+$/,"",v); print v*m*1.048576}' <<<"$out")
  echo "$rps $tps"
}

declare -A rps mbs
for size in 64KiB 1MiB; do for server in nginx sluice; do rps[$server$size]=0; mbs[$server$size]=0; done; done
echo "rounds=$rounds seconds=$seconds connections=$conns cores=$(nproc)"
for round in $(seq "$rounds"); do
  for size in 64KiB 1MiB; do
    for server in nginx sluice; do
      port=$nport; [ $server = sluice ] && port=$sport
      read -r r m < <(measure "http://127.0.0.1:$port${path[$size]}")
      printf 'round %d  %-6s %-6s  %10.1f req/s  %9.1f MB/s\n' "$round" "$server" "$size" "$r" "$m"
      rps[$server$size]=$(python3 -c "print(${rps[$server$size]} + $r)")
      mbs[$server$size]=$(python3 -c "print(${mbs[$server$size]} + $m)")
    done
  done
done
echo
printf '%-6s  %12s %12s  %10s %10s  %s\n' size "nginx req/s" "sluice req/s" "nginx MB/s" "sluice MB/s" "ratio sluice/nginx"
for size in 64KiB 1MiB; do
  python3 - "$size" "${rps[nginx$size]}" "${rps[sluice$size]}" "${mbs[nginx$size]}" "${mbs[sluice$size]}" "$rounds" <<'PY'
import sys
size, nr, sr, nm, sm, n = sys.argv[1], *map(float, sys.argv[2:6]), int(sys.argv[6])
print(f"{size:<6}  {nr/n:12.1f} {sr/n:12.1f}  {nm/n:10.1f} {sm/n:10.1f}  req/s {sr/nr:.2f}x  MB/s {sm/nm:.2f}x")
PY
done
