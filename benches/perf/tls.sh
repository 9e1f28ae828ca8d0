#!/usr/bin/env bash
# TLS edge performance against nginx with the same certificate, one worker each (CPU 1), load
# on CPU 0, rounds interleaved:
# - handshakes: wrk over HTTPS with "Connection: close", so every request is a new TLS
#   connection and handshake (ECDSA P-256 certificate; TLS 1.3 as both negotiate it);
# - h2 hits: h2load, 10 connections x 10 concurrent streams, a cached 1 KiB object.
#   benches/perf/tls.sh                    # needs nginx, wrk, h2load, openssl, curl
#   TLS_ROUNDS=3 TLS_SECONDS=8 benches/perf/tls.sh
# Results: target/perf/tls-<timestamp>/summary.md and results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/perf/lib.sh
for tool in nginx wrk h2load openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "tls.sh needs $tool" >&2; exit 2; }
done
ROUNDS="${TLS_ROUNDS:-3}"
SECS="${TLS_SECONDS:-8}"
DIR=/dev/shm/onair-perf-tls-edge
OUT="target/perf/tls-$(date +%Y%m%d-%H%M%S)"
cargo build --locked --release --bin onair
rm -rf "$DIR" && mkdir -p "$DIR"/{htdocs,tmp,logs,cache} "$OUT"
head -c 1024 /dev/urandom > "$DIR/htdocs/1k.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=portal.test" -addext "subjectAltName=DNS:portal.test" \
  -keyout "$DIR/portal.key" -out "$DIR/portal.pem" 2>/dev/null
static_origin "$DIR/origin.conf" "$DIR" 8397
nginx_conf "$DIR/edge.conf" "$DIR" "
    proxy_cache_path $DIR/cache keys_zone=edge:32m;
    upstream origin { server 127.0.0.1:8397; keepalive 64; }
    server {
        listen 127.0.0.1:8445 ssl http2;
        ssl_certificate $DIR/portal.pem;
        ssl_certificate_key $DIR/portal.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_cache edge;
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \\\"\\\";
        }
    }"
onair_conf "$DIR/onair.toml" "$DIR/state" 8397 \
  'http = ["127.0.0.1:8398"]
https = ["127.0.0.1:8446"]' "[protect]
keepalive_requests = 1000000
[[tls.cert]]
cert = \"$DIR/portal.pem\"
key = \"$DIR/portal.key\""
pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
taskset -c 0 nginx -c "$DIR/origin.conf" -e "$DIR/logs/origin.log" & pids+=($!)
declare -A PID PORT
taskset -c 1 nginx -c "$DIR/edge.conf" -e "$DIR/logs/edge.log" & PID[nginx]=$!
taskset -c 1 ./target/release/onair run -c "$DIR/onair.toml" > "$DIR/logs/onair.log" 2>&1 & PID[onair]=$!
pids+=("${PID[nginx]}" "${PID[onair]}")
PORT[nginx]=8445 PORT[onair]=8446
for t in nginx onair; do
  for _ in $(seq 50); do
    curl -fsk "https://127.0.0.1:${PORT[$t]}/1k.bin" -o /dev/null && break
    sleep 0.2
  done
  for _ in 1 2 3; do curl -fsk "https://127.0.0.1:${PORT[$t]}/1k.bin" -o /dev/null; done
done
freeze_all_but() {
  local x
  for x in nginx onair; do
    if [ "$x" = "$1" ]; then kill -CONT "${PID[$x]}"; else kill -STOP "${PID[$x]}"; fi
  done
}
cpu_ticks() {  # the process and its children (nginx's worker)
  local total=0 p
  for p in "$1" $(pgrep -P "$1"); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
measure() {  # TARGET ROUND
  local t=$1 r=$2 port=${PORT[$1]} c0 c1 hs h2
  freeze_all_but "$t"
  sleep 0.5
  c0=$(cpu_ticks "${PID[$t]}")
  hs=$(taskset -c 0 wrk -t1 -c50 -d"${SECS}s" -H "Connection: close" "https://127.0.0.1:$port/1k.bin" \
    | awk '/Requests\/sec/ {print $2}')
  c1=$(cpu_ticks "${PID[$t]}")
  h2=$(taskset -c 0 h2load -c10 -m10 -D"$SECS" "https://127.0.0.1:$port/1k.bin" 2>/dev/null \
    | awk '/^finished in/ {gsub(",", "", $4); print $4}')
  python3 -c "import json,os,sys; print(json.dumps({'target': '$t', 'round': $r, 'handshakes_per_s': float('$hs' or 0), 'handshake_cpu_s': ($c1 - $c0) / os.sysconf('SC_CLK_TCK'), 'h2_req_per_s': float('${h2:-0}' or 0)}))" \
    | tee -a "$OUT/results.jsonl"
}
for r in $(seq "$ROUNDS"); do
  measure nginx "$r"
  measure onair "$r"
done
python3 - "$OUT/results.jsonl" "$SECS" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda t, k: statistics.median(r[k] for r in rows if r["target"] == t)
print(f"# TLS edge: handshakes and HTTP/2 hits ({sys.argv[2]} s runs, medians of {len(rows) // 2} rounds)\n")
print("| target | new TLS connections/s | ratio | CPU s per 1k handshakes | h2 hits req/s | ratio |")
print("|---|--:|--:|--:|--:|--:|")
for t in ("nginx", "onair"):
    hs, h2 = med(t, "handshakes_per_s"), med(t, "h2_req_per_s")
    cpu = med(t, "handshake_cpu_s") / (hs * float(sys.argv[2])) * 1000 if hs else 0
    print(f"| {t} | {hs:,.0f} | {hs / med('nginx', 'handshakes_per_s'):.2f} | {cpu:.3f} | {h2:,.0f} | {h2 / med('nginx', 'h2_req_per_s'):.2f} |")
PY
echo "results: $OUT" >&2
