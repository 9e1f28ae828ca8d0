#!/usr/bin/env bash
# Side-by-side load comparison of onair against nginx (and optionally Varnish and HAProxy)
# with the shared perf harness. Needs root for the harness's package install and CPU pinning.
#   benches/perf/run.sh                 # pass-through (no-store) against nginx, 3 rounds
#   benches/perf/run.sh --proxies nginx,varnish,haproxy hot1k pass
# Results: target/perf/<timestamp>/summary.md; copy the tables into docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
HARNESS="${ONAIR_PERF_HARNESS:-../shared/perf}"
[ -x "$HARNESS/run-perf.sh" ] || { echo "perf harness not found at $HARNESS" >&2; exit 2; }
command -v wrk >/dev/null 2>&1 || "$HARNESS/install-deps.sh"
cargo build --locked --release --bin onair --example bare_proxy
args=("$@")
if [ ${#args[@]} -eq 0 ]; then args=(--proxies nginx pass); fi
# bare-pingora: a Pingora proxy with no onair logic (examples/bare_proxy.rs), the floor that
# shows what onair's own per-request work costs.
# ONAIR_PERF_CEILING=1 adds pingora-static: the same binary answering every request with a fixed
# 1 KiB body from request_filter, the most any Pingora-based cache can serve. Use it with the
# 1 KiB scenarios only (hot1k ws10k): the harness checks body sizes and stops on hot256k.
extra=()
if [ "${ONAIR_PERF_CEILING:-0}" = 1 ]; then
  extra=(--candidate pingora-static "env BARE_STATIC=1 BARE_PORT=8352 $PWD/target/release/examples/bare_proxy" 8352)
fi
exec "$HARNESS/run-perf.sh" "${args[@]}" \
  --candidate onair "$PWD/target/release/onair run -c $PWD/${ONAIR_PERF_CONFIG:-benches/perf/onair.toml}" 8350 \
  --candidate bare-pingora "$PWD/target/release/examples/bare_proxy" 8351 "${extra[@]}"
