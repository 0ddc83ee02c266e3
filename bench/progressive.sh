#!/usr/bin/env bash
# Progressive transfer, measured: for generated photos (baseline JPEGs, as a camera makes
# them), the share of bytes at each scan boundary once Sluice has made them progressive, and
# the time to the file id against the time to the whole upload over a slow link, at
# q = 0.2, 0.3 and 0.5. The link is the CLI's --limit-rate (a rate-limited client).
#
#   bench/progressive.sh [RATE] [PHOTOS]      defaults: 100KiB (about 0.8 Mbit/s) and 3
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-100KiB}"
photos="${2:-3}"
command -v cjpeg >/dev/null || { echo "needs cjpeg (apt-get install libjpeg-turbo-progs)" >&2; exit 1; }

cargo build --quiet --release -p sluice
work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
(cd bench/encoders && cargo run --quiet --release -- photos "$work/photos" "$photos")

SLUICE="${CARGO_TARGET_DIR:-$PWD/target}/release/sluice"
"$SLUICE" serve --data "$work/data" --http 127.0.0.1:0 2> "$work/serve.log" &
server=$!
for _ in $(seq 100); do
  url="$(grep -o 'http=[^ ]*' "$work/serve.log" | head -1 | cut -d= -f2 || true)"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "sluice serve did not start" >&2; cat "$work/serve.log" >&2; exit 1; }

echo "== share of bytes at each scan boundary (after sluice makes the photo progressive)"
for photo in "$work"/photos/*.jpg; do
  id="$("$SLUICE" upload "$photo" --server "$url" --progressive --q 1 2>/dev/null)"
  curl -sS -o "$work/p.jpg" "$url/v1/files/$id"
  python3 - "$work/p.jpg" "$(basename "$photo")" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
ends, i = [], 2
while i + 4 <= len(data):
    if data[i] != 0xFF: break
    m = data[i + 1]
    if m == 0xD9: break
    seg = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
    if m != 0xDA:
        i = seg; continue
    j = seg
    while j + 1 < len(data) and not (data[j] == 0xFF and data[j + 1] not in (0x00, *range(0xD0, 0xD8))):
        j += 1
    ends.append(j); i = j
print(f"{sys.argv[2]}: {len(data)} bytes, {len(ends)} scans, % at each scan end:",
      " ".join(f"{100 * e / len(data):.0f}" for e in ends))
PY
done

echo "== time to file id vs time to complete at $rate"
printf "%-12s %5s %10s %12s %7s\n" photo q id_s complete_s ratio
for q in 0.2 0.3 0.5; do
  for photo in "$work"/photos/*.jpg; do
    line="$("$SLUICE" upload "$photo" --server "$url" --progressive --q "$q" \
            --limit-rate "$rate" 2>&1 >/dev/null | grep 'id after')"
    id_s="$(echo "$line" | sed -E 's/.*id after ([0-9.]+) s.*/\1/')"
    all_s="$(echo "$line" | sed -E 's/.*complete after ([0-9.]+) s.*/\1/')"
    ratio="$(python3 -c "print(f'{$id_s / $all_s:.2f}')")"
    printf "%-12s %5s %10s %12s %7s\n" "$(basename "$photo")" "$q" "$id_s" "$all_s" "$ratio"
  done
done
