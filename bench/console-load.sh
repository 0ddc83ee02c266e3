#!/usr/bin/env bash
# How fast the console's overview loads from a local `sluice serve`: headless Chromium with a
# cold cache (a new browser session per round), navigation start to the `load` event of
# /console/, the median of ROUNDS; and the bytes transferred for it (page, script, styles,
# icon). Usage: bench/console-load.sh [ROUNDS]   (default 5; needs chromium, chromedriver)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=${1:-5}
ensure_tools chromium=chromium chromedriver=chromium-driver
cargo build --release -q -p sluice
bin=${CARGO_TARGET_DIR:-target}/release/sluice
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(free_port); dport=$(free_port)
"$bin" serve --data "$work/data" --http "127.0.0.1:$port" 2>"$work/serve.log" & pids+=($!)
chromedriver --port="$dport" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && curl -sf "http://127.0.0.1:$dport/status" >/dev/null && break; sleep 0.1; done
python3 - "$rounds" "http://127.0.0.1:$port/console/" "http://127.0.0.1:$dport" <<'PY'
import json, statistics, sys, time, urllib.request
rounds, page, driver = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def call(method, path, body=None):
    req = urllib.request.Request(driver + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["value"]
caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
    "binary": "/usr/bin/chromium",
    "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--window-size=1280,800"]}}}}
loads, sizes = [], []
for _ in range(rounds):
    session = call("POST", "/session", caps)["sessionId"]
    try:
        call("POST", f"/session/{session}/url", {"url": page})
        # Wait until load has finished (loadEventEnd is set after the load handlers ran).
        for _ in range(100):
            t = call("POST", f"/session/{session}/execute/sync", {"script":
                "const n = performance.getEntriesByType('navigation')[0]; if (!n || !n.loadEventEnd) return null; "
                "const r = performance.getEntriesByType('resource').filter(e => !e.name.includes('/v1/') && !e.name.endsWith('/metrics')); "
                "return {load: n.loadEventEnd - n.startTime, bytes: n.transferSize + r.reduce((a, e) => a + e.transferSize, 0), files: 1 + r.length};", "args": []})
            if t: break
            time.sleep(0.05)
        loads.append(t["load"]); sizes.append((t["bytes"], t["files"]))
    finally:
        call("DELETE", f"/session/{session}")
print(f"console overview, cold cache, {rounds} rounds: load {statistics.median(loads):.0f} ms median "
      f"(min {min(loads):.0f}, max {max(loads):.0f}); {sizes[0][0]} bytes in {sizes[0][1]} files")
PY
