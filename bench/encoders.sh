#!/usr/bin/env bash
# Compares progressive JPEG encoders for progressive transfer: bytes and the cumulative share of
# the file at each scan boundary, on generated photos. Needs libjpeg-turbo-progs (cjpeg).
set -euo pipefail
cd "$(dirname "$0")/encoders"
cargo run --quiet --release
