#!/usr/bin/env bash
# The test command: set-up, then formatting, lints, and every test (unit and integration,
# which start real origins and real onair processes on 127.0.0.1 ephemeral ports).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
