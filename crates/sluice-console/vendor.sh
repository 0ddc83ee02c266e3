#!/usr/bin/env bash
# Refreshes the console's vendored players from npm, at the pinned versions below, with their
# licenses. The console never loads them from another host: they are embedded in the binary.
# Needs curl, tar and sha256sum. Run from anywhere; commit what changes.
set -euo pipefail
cd "$(dirname "$0")/assets/vendor"
HLS_VERSION=1.5.20
MPEGTS_VERSION=1.8.0
fetch() { # name version file-in-package target
  local name=$1 version=$2 file=$3 target=$4 tmp
  tmp=$(mktemp -d)
  curl -fsSL "https://registry.npmjs.org/$name/-/$name-$version.tgz" | tar -xz -C "$tmp"
  cp "$tmp/package/$file" "$target"
  cp "$tmp/package/LICENSE" "$target.LICENSE" 2>/dev/null \
    || cp "$tmp/package/LICENSE.md" "$target.LICENSE" 2>/dev/null \
    || { echo "vendor.sh: no LICENSE in $name $version" >&2; exit 1; }
  echo "$name $version $(sha256sum "$target" | cut -d' ' -f1)" >> VERSIONS.new
  rm -rf "$tmp"
}
rm -f VERSIONS.new
fetch hls.js "$HLS_VERSION" dist/hls.light.min.js hls.min.js
fetch mpegts.js "$MPEGTS_VERSION" dist/mpegts.js mpegts.min.js
mv VERSIONS.new VERSIONS
cat VERSIONS
