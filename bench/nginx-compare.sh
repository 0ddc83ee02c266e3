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

source bench/lib.sh
ensure_tools nginx=nginx-light wrk=wrk curl=curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet -p sluice
SLUICE="${CARGO_TARGET_DIR:-$PWD/target}/release/sluice"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

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

echo "rounds=$rounds seconds=$seconds connections=$conns cores=$(nproc)"
wrk_compare nginx "$nport" sluice "$sport"
