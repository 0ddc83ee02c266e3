#!/usr/bin/env bash
# Cache hits at the edge against nginx proxy_cache holding the same files: one `sluice serve`
# as origin, `sluice edge` and nginx (proxy_cache, sendfile, access_log off) both in front of
# it, both warmed, then driven with wrk in the same run, alternating; prints the ratios.
#
#   bench/edge-compare.sh [ROUNDS] [SECONDS] [CONNECTIONS]
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

oport=$(free_port); eport=$(free_port); nport=$(free_port)
wait_up() { for _ in $(seq 100); do curl -sf "$1" -o /dev/null && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }

"$SLUICE" serve --data "$work/origin" --http "127.0.0.1:$oport" 2>"$work/origin.log" &
pids+=($!)
wait_up "http://127.0.0.1:$oport/healthz"
"$SLUICE" edge --origin "http://127.0.0.1:$oport" --http "127.0.0.1:$eport" \
  --cache "$work/edge" --cache-size 1GiB 2>"$work/edge.log" &
pids+=($!)
wait_up "http://127.0.0.1:$eport/healthz"

cat > "$work/nginx.conf" <<CONF
worker_processes $(nproc);
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  # tcp_nopush on stalls cache hits of small files for the 40 ms delayed-ACK timeout (seen
  # here: 770 req/s against 37,700 with it off); nginx gets its best setting.
  tcp_nopush off;
  keepalive_requests 100000;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=files:16m max_size=1g inactive=1h use_temp_path=off;
  server {
    listen 127.0.0.1:$nport;
    location /v1/files/ {
      proxy_pass http://127.0.0.1:$oport;
      proxy_http_version 1.1;
      proxy_cache files;
      proxy_cache_key \$uri;
      proxy_cache_valid 200 1h;
      proxy_cache_lock on;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
CONF
chmod -R a+rX "$work"
"$NGINX" -c "$work/nginx.conf" -p "$work" &
pids+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$nport/" -o /dev/null && break; sleep 0.1; done

declare -A path
for size in 64KiB 1MiB; do
  case $size in 64KiB) bytes=65536;; 1MiB) bytes=1048576;; esac
  head -c "$bytes" /dev/urandom > "$work/$size.bin"
  id=$("$SLUICE" upload "$work/$size.bin" --server "http://127.0.0.1:$oport")
  path[$size]="/v1/files/$id"
  # Warm both caches, then check each answers from its cache with the right bytes.
  for _ in 1 2 3; do
    curl -sf "http://127.0.0.1:$eport${path[$size]}" -o /dev/null
    curl -sf "http://127.0.0.1:$nport${path[$size]}" -o /dev/null
    sleep 0.2
  done
  curl -sf -D - "http://127.0.0.1:$eport${path[$size]}" -o "$work/e.bin" | grep -qi '^sluice-cache: hit' \
    || { echo "the edge does not hit on $size" >&2; exit 1; }
  curl -sf -D - "http://127.0.0.1:$nport${path[$size]}" -o "$work/n.bin" | grep -qi '^x-cache: HIT' \
    || { echo "nginx does not hit on $size" >&2; exit 1; }
  cmp "$work/e.bin" "$work/$size.bin" && cmp "$work/n.bin" "$work/$size.bin"
done

echo "cache hits: rounds=$rounds seconds=$seconds connections=$conns cores=$(nproc)"
wrk_compare nginx "$nport" edge "$eport"
