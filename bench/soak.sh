#!/usr/bin/env bash
# A soak of a tracker, a two-node group and a live role (recording into the group) under mixed
# load (uploads, reads and deletes through the CLI, ffmpeg publishing and playing over RTMP
# and HTTP-FLV), with a storage node SIGKILLed and restarted every few minutes. Ends with every
# file checked on both nodes and prints a JSON report: acknowledged, lost, corrupted, missing
# on a replica, resurrected, client failures by cause, and the largest RSS of each process.
# Exits non-zero if any acknowledged file was lost, damaged or missing on a node, or a deleted
# one came back. Not part of CI (it runs for half an hour by default).
#
#   bench/soak.sh [MINUTES] [KILL_EVERY_SECS]      (default 30 minutes, a SIGKILL every 180 s)
#   more knobs: python3 bench/soak.py --help
#
# Disk: about 0.5 GB per node per minute at the default rates. The working directory (node
# data, logs, the ledger of what clients were told) is removed after a clean run and kept
# after a failing one (or always, with SOAK_KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
kill_every=${2:-180}
source bench/lib.sh
ensure_tools ffmpeg=ffmpeg ffprobe=ffmpeg python3=python3

cargo build --release --quiet -p sluice
target=${CARGO_TARGET_DIR:-$PWD/target}
base=${SLUICE_BENCH_DIR:-$target}
mkdir -p "$base"
work=$(mktemp -d "$base/soak.XXXXXX")
echo "soak: working in $work" >&2
status=0
python3 bench/soak.py --sluice "$target/release/sluice" --work "$work" \
  --minutes "$minutes" --kill-every "$kill_every" "${@:3}" || status=$?
if [ "$status" -eq 0 ] && [ "${SOAK_KEEP:-0}" != 1 ]; then
  rm -rf "$work"
else
  echo "soak: kept $work (logs: *.log; what clients were told: ledger.jsonl)" >&2
fi
exit "$status"
