#!/usr/bin/env bash
# Reads while half-dead volumes are compacted: wrk (keep-alive connections, random files)
# against `sluice serve`, in rounds while compaction runs and in rounds after it finished, and
# the ratio. Files are 100 KB photos in 64 MiB volumes; every other file of the sealed volumes
# is deleted, so each is half dead; compaction copies at compact_bytes_per_sec (32 MiB/s, the
# default). The hot cache (256 MiB) holds less than the live files, so most reads go to disk
# (the page cache, on a machine with memory to spare).
#
#   bench/compaction.sh [FILES] [CONNECTIONS] [ROUND_SECONDS]   (default 12000, 32, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
files=${1:-12000}
conns=${2:-32}
round=${3:-2}
ensure_tools wrk=wrk

bench_setup compaction
port=$(free_port)
url="http://127.0.0.1:$port"
start() { # COMPACT_INTERVAL
  printf 'volume_size = "64MiB"\ncompact_interval = "%s"\n' "$1" >"$work/sluice.toml"
  "$SLUICE" serve --data "$work/data" --http "127.0.0.1:$port" --config "$work/sluice.toml" 2>>"$work/serve.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && return; sleep 0.1; done
  echo "sluice serve did not start:" >&2; tail -3 "$work/serve.log" >&2
  exit 1
}
metric() { curl -sf "$url/metrics" | awk -v n="$1" '$1 == n {print $2}'; }

start 168h
# Fill, then delete every other file but the newest tenth (the active volume's).
python3 - "$url" "$files" "$work/live" <<'PY'
import http.client, json, os, sys, threading, urllib.parse
url, files, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host = urllib.parse.urlparse(url).netloc
body = os.urandom(100_000)
ids = [None] * files
def upload(part):
    c = http.client.HTTPConnection(host)
    for i in range(part, files, 8):
        c.request("POST", "/v1/files", body, {"content-type": "image/jpeg"})
        r = c.getresponse()
        ids[i] = json.loads(r.read())["fileid"]
threads = [threading.Thread(target=upload, args=(p,)) for p in range(8)]
for t in threads: t.start()
for t in threads: t.join()
live = []
c = http.client.HTTPConnection(host)
for i, fid in enumerate(ids):
    if i % 2 == 0 and i < files * 9 // 10:
        c.request("DELETE", "/v1/files/" + fid)
        r = c.getresponse(); r.read()
        assert r.status == 204, r.status
    else:
        live.append(fid)
open(out, "w").write("\n".join(live) + "\n")
PY
kill "$pid"
wait "$pid" 2>/dev/null || true
volumes=$(ls "$work/data/volumes" | wc -l)
echo "$(wc -l <"$work/live") live files of 100 KB in $volumes volumes, every sealed one half dead"

{
  echo 'local ids = {}'
  echo "for line in io.lines(\"$work/live\") do ids[#ids + 1] = line end"
  echo 'math.randomseed(7)'
  echo 'request = function() return wrk.format("GET", "/v1/files/" .. ids[math.random(#ids)]) end'
} >"$work/random.lua"
reads() { wrk -t1 -c"$conns" -d"${round}s" -s "$work/random.lua" "$url" | awk '/^Requests\/sec:/ {print $2}'; }

# Compaction starts a second after the restart: rounds run while it does, then after.
start 1s
for _ in $(seq 100); do [ "$(metric sluice_volume_compacting)" = 1 ] && break; sleep 0.05; done
during=()
while [ "$(metric sluice_volume_compacting)" = 1 ]; do
  during+=("$(reads)")
  # Between two volumes the flag drops for a moment: look again before deciding it is over.
  [ "$(metric sluice_volume_compacting)" = 1 ] || sleep 0.3
done
compactions=$(metric sluice_volume_compactions_total)
after=("$(reads)" "$(reads)" "$(reads)")
python3 - "${#during[@]}" "${during[@]}" "${after[@]}" "$compactions" "$round" <<'PY'
import sys
n = int(sys.argv[1])
during = [float(x) for x in sys.argv[2:2 + n]]
after = [float(x) for x in sys.argv[2 + n:2 + n + 3]]
compactions, seconds = sys.argv[-2], sys.argv[-1]
if not during:
    print("compaction ended before a round could run; use more FILES")
    sys.exit(1)
d, a = sum(during) / len(during), sum(after) / len(after)
print(f"reads while compacting: {d:8.0f}/s  ({len(during)} rounds of {seconds} s: {' '.join(f'{x:.0f}' for x in during)})")
print(f"reads after:            {a:8.0f}/s  ({' '.join(f'{x:.0f}' for x in after)})")
print(f"ratio {d / a:.2f}x with {compactions} volumes compacted (target: reads fall by at most 30%, ratio >= 0.70)")
PY
