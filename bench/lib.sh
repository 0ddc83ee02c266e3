# Shared by the bench scripts: tool installation, free ports, and the wrk comparison of two
# servers over the same 64 KiB and 1 MiB files. Source it; it defines functions only.

# `install_packages package ...`: apt-get, with sudo unless root.
install_packages() {
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null
}

# `ensure_tools command=package ...`: installs the packages of the commands that are missing.
ensure_tools() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%=*}" ] || need+=("${pair#*=}")
  done
  [ ${#need[@]} -eq 0 ] || install_packages "${need[@]}"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wrk prints "Requests/sec: N" and "Transfer/sec: N.NNMB"; keep requests/s and MB/s.
wrk_measure() { # URL
  local out rps tps
  out=$(wrk -t1 -c"$conns" -d"${seconds}s" --latency "$1")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  tps=$(awk '/^Transfer\/sec:/ {v=$2; if (v ~ /GB$/) m=1024; else if (v ~ /MB$/) m=1; else if (v ~ /KB$/) m=1/1024; else m=1/1048576; sub(/[A-Z]+$/,"",v); print v*m*1.048576}' <<<"$out")
  echo "$rps $tps"
}

# `wrk_compare A PORT_A B PORT_B`: $rounds rounds, alternating, of each server on the files
# in the caller's `path` array (keys 64KiB and 1MiB); prints each run and the B/A ratios.
wrk_compare() {
  local a=$1 a_port=$2 b=$3 b_port=$4 round size server port r m
  declare -A rps mbs
  for size in 64KiB 1MiB; do for server in "$a" "$b"; do rps[$server$size]=0; mbs[$server$size]=0; done; done
  for round in $(seq "$rounds"); do
    for size in 64KiB 1MiB; do
      for server in "$a" "$b"; do
        port=$a_port; [ "$server" = "$b" ] && port=$b_port
        read -r r m < <(wrk_measure "http://127.0.0.1:$port${path[$size]}")
        printf 'round %d  %-6s %-6s  %10.1f req/s  %9.1f MB/s\n' "$round" "$server" "$size" "$r" "$m"
        rps[$server$size]=$(python3 -c "print(${rps[$server$size]} + $r)")
        mbs[$server$size]=$(python3 -c "print(${mbs[$server$size]} + $m)")
      done
    done
  done
  echo
  printf '%-6s  %12s %12s  %10s %10s  %s\n' size "$a req/s" "$b req/s" "$a MB/s" "$b MB/s" "ratio $b/$a"
  for size in 64KiB 1MiB; do
    python3 - "$size" "${rps[$a$size]}" "${rps[$b$size]}" "${mbs[$a$size]}" "${mbs[$b$size]}" "$rounds" <<'PY'
import sys
size, ar, br, am, bm, n = sys.argv[1], *map(float, sys.argv[2:6]), int(sys.argv[6])
print(f"{size:<6}  {ar/n:12.1f} {br/n:12.1f}  {am/n:10.1f} {bm/n:10.1f}  req/s {br/ar:.2f}x  MB/s {bm/am:.2f}x")
PY
  done
}

# `bench_setup NAME`: builds the release binary (SLUICE), makes a working directory under
# target/ (work), and on exit kills every process in `pids`, prints the servers' most frequent
# warnings (from work/*.log) and removes the directory.
bench_setup() {
  cargo build --release --quiet -p sluice
  SLUICE="${CARGO_TARGET_DIR:-$PWD/target}/release/sluice"
  work=$(mktemp -d "${SLUICE_BENCH_DIR:-${CARGO_TARGET_DIR:-$PWD/target}}/$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  grep -h -E "ERROR|WARN" "$work"/*.log 2>/dev/null | sort | uniq -c | sort -rn | head -5 >&2 || true
  rm -rf "$work"
}
