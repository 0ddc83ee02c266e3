#!/usr/bin/env bash
# A soak of a tracker, a two-node group and a live role (recording into the group) under mixed
# load (uploads, reads and deletes through the CLI, ffmpeg publishing and playing over RTMP
# and HTTP-FLV), with a storage node SIGKILLed and restarted every few minutes. Ends with every
# file checked on both nodes and prints a JSON report: acknowledged, lost, corrupted, missing
# on a replica, resurrected, client failures by cause, and the largest RSS of each process.
# Exits non-zero if anything acknowledged was lost or damaged, or a deleted file came back.
# Not part of CI (it runs for half an hour by default).
#
#   bench/soak.sh [MINUTES] [KILL_EVERY_SECS]      (default 30 minutes, a SIGKILL every 180 s)
#   more knobs: python3 bench/soak.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
kill_every=${2:-180}
source bench/lib.sh
ensure_tools ffmpeg=ffmpeg ffprobe=ffmpeg python3=python3

cargo build --release --quiet -p sluice
work=$(mktemp -d "${SLUICE_BENCH_DIR:-$PWD/target}/soak.XXXXXX")
echo "soak: working in $work (kept; remove it when done)" >&2
python3 bench/soak.py --sluice "$PWD/target/release/sluice" --work "$work" \
  --minutes "$minutes" --kill-every "$kill_every" "${@:3}"
