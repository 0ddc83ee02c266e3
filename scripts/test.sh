#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, all tests, and a build of the fuzz targets.
# Installs what the tests need when it is missing (Debian/Ubuntu: apt-get, as root or via sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

# Programs the tests drive as real third-party clients.
needed=()
command -v python3 >/dev/null 2>&1 || needed+=(python3 python3-pip)
command -v curl >/dev/null 2>&1 || needed+=(curl)
command -v djpeg >/dev/null 2>&1 || needed+=(libjpeg-turbo-progs)
command -v ffmpeg >/dev/null 2>&1 || needed+=(ffmpeg)
# Headless Chromium, driven over WebDriver, is the browser the tests check pages with.
command -v chromium >/dev/null 2>&1 || needed+=(chromium)
command -v chromedriver >/dev/null 2>&1 || needed+=(chromium-driver)
if [ ${#needed[@]} -gt 0 ]; then
  echo "test.sh: installing ${needed[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${needed[@]}" >/dev/null
fi
# tuspy, the stock Python tus client, drives the tus server in the tests.
if ! python3 -c "import tusclient" >/dev/null 2>&1; then
  echo "test.sh: installing tuspy" >&2
  python3 -m pip install --quiet tuspy 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages tuspy
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Fuzz targets live outside the workspace (cargo fuzz builds them with its own flags); checking
# them here keeps them compiling.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
# --no-fail-fast: every test binary runs even when one fails, so one run shows every failure.
cargo test --workspace --no-fail-fast
