#!/usr/bin/env bash
# Slow-client attacks against onair with slowhttptest (Debian package): slow headers
# (slowloris), slow body (R-U-Dead-Yet) and slow read, each for SLOW_SECONDS, while a reader
# from another address (benches/perf/reader.py, 127.0.0.2) fetches a cached page 20 times a
# second. onair runs with its default protections except header_timeout/body_timeout/
# send_timeout shortened to 5 s so a run is short.
#   benches/perf/slowhttp.sh               # needs slowhttptest, nginx, python3, curl
#   SLOW_ATTACKS="slow-read" SLOW_SECONDS=20 benches/perf/slowhttp.sh   # one attack
# Prints, per attack, slowhttptest's last status line (connections pending / connected /
# closed; "service available") and the reader's success rate and p99. Results:
# target/perf/slowhttp-<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/perf/lib.sh
SECS="${SLOW_SECONDS:-30}"
DIR=/dev/shm/onair-perf-slow
OUT="target/perf/slowhttp-$(date +%Y%m%d-%H%M%S)"
for tool in slowhttptest nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "slowhttp.sh needs $tool" >&2; exit 2; }
done
ulimit -n 65536 2>/dev/null || true
cargo build --locked --release --bin onair
rm -rf "$DIR" && mkdir -p "$DIR"/{htdocs,tmp,logs} "$OUT"
head -c 1024 /dev/urandom > "$DIR/htdocs/1k.bin"
head -c $((4 << 20)) /dev/urandom > "$DIR/htdocs/big.bin"
static_origin "$DIR/origin.conf" "$DIR" 8390 'location /upload { return 200 "ok\n"; }'
onair_conf "$DIR/onair.toml" "$DIR/state" 8390 \
  'http = ["127.0.0.1:8391"]
metrics = "127.0.0.1:8392"' '[protect]
header_timeout = "5s"
body_timeout = "5s"
send_timeout = "5s"'
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
taskset -c 0 nginx -c "$DIR/origin.conf" -e "$DIR/logs/origin.log" & pids+=($!)
taskset -c 1 ./target/release/onair run -c "$DIR/onair.toml" > "$DIR/logs/onair.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -fs http://127.0.0.1:8391/1k.bin -o /dev/null && break; sleep 0.2; done
curl -fs http://127.0.0.1:8391/1k.bin -o /dev/null
curl -fs http://127.0.0.1:8391/big.bin -o /dev/null

attack() {  # NAME SLOWHTTPTEST-ARGS...
  local name=$1; shift
  echo "== $name" | tee -a "$OUT/summary.txt"
  taskset -c 0 python3 benches/perf/reader.py --from 127.0.0.2 --to 127.0.0.1:8391 \
    --path /1k.bin --rate 20 --seconds "$SECS" > "$OUT/reader-$name.json" &
  local reader=$!
  taskset -c 0 slowhttptest -l "$SECS" -o "$OUT/$name" -g "$@" > "$OUT/$name.log" 2>&1 || true
  wait "$reader"
  # slowhttptest's own summary (its probe comes from the attacking address, which the
  # per-address connection cap refuses once the attack holds max_connections_per_ip).
  grep -E "pending|connected|closed|service available|Exit status" "$OUT/$name.log" | tail -6 \
    | tee -a "$OUT/summary.txt"
  echo "reader from another address: $(cat "$OUT/reader-$name.json")" | tee -a "$OUT/summary.txt"
  curl -s http://127.0.0.1:8392/metrics \
    | grep -E '^onair_(slow_clients_total|connections_denied_total)' | tee -a "$OUT/summary.txt"
}
# 1000 connections each; -H slow headers, -B slow body, -X slow read.
ATTACKS="${SLOW_ATTACKS:-slow-headers slow-body slow-read}"
want() { [[ " $ATTACKS " == *" $1 "* ]]; }
want slow-headers && attack slow-headers -c 1000 -H -i 4 -r 200 -t GET -u http://127.0.0.1:8391/1k.bin -x 24 -p 3
want slow-body && attack slow-body -c 1000 -B -i 4 -r 200 -s 8192 -t POST -u http://127.0.0.1:8391/upload -x 10 -p 3
want slow-read && attack slow-read -c 1000 -X -r 200 -w 512 -y 1024 -n 5 -z 32 -u http://127.0.0.1:8391/big.bin -p 3
echo "results: $OUT" >&2
