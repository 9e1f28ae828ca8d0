#!/usr/bin/env bash
# The demo command: set-up, build, then `onair demo` (an edge on 127.0.0.1:8080 in front of
# two sample origins; Ctrl-C stops it all).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --release
exec target/release/onair demo
