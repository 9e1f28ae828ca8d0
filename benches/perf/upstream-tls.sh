#!/usr/bin/env bash
# Upstream TLS overhead: onair passing every request (no-store) to the origin over plain HTTP
# and over TLS with connection reuse, side by side in one interleaved run of the shared perf
# harness. The harness's origin speaks plain HTTP only, so a small nginx "front" on the load CPU
# (CPU 0) gives it a TLS port and an equivalent plain port; both onair candidates go through it,
# so the only difference between them is TLS. Compare "k req per proxy CPU-s" (the pass
# scenario is capped by CPU 0, so requests/s alone hides onair's own cost).
#   benches/perf/upstream-tls.sh            # needs root (harness), nginx, openssl
# Results: target/perf/<timestamp>/summary.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/perf/lib.sh
HARNESS="${ONAIR_PERF_HARNESS:-../shared/perf}"
DIR=/dev/shm/onair-perf-tls
rm -rf "$DIR" && mkdir -p "$DIR"/{tmp,logs}
command -v openssl >/dev/null || { echo "needs openssl" >&2; exit 2; }
# A private CA and a certificate for origin.perf.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=onair perf CA" -keyout "$DIR/ca.key" -out "$DIR/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=origin.perf" \
  -keyout "$DIR/origin.key" -out "$DIR/origin.csr" 2>/dev/null
printf 'subjectAltName=DNS:origin.perf\n' > "$DIR/ext.cnf"
openssl x509 -req -in "$DIR/origin.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial \
  -days 2 -extfile "$DIR/ext.cnf" -out "$DIR/origin.pem" 2>/dev/null
nginx_conf "$DIR/front.conf" "$DIR" "
    upstream origin { server 127.0.0.1:8300; keepalive 512; }
    server {
        listen 127.0.0.1:8360;
        listen 127.0.0.1:8361 ssl;
        ssl_certificate $DIR/origin.pem;
        ssl_certificate_key $DIR/origin.key;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
candidate() {  # candidate NAME PORT UPSTREAM_PORT TLS_KEYS
  cat > "$DIR/$1.toml" <<CONF
[node]
id = "edge-perf"
threads = 1
grace_period = "1s"
state_dir = "$DIR/state-$1"
[listen]
http = ["127.0.0.1:$2"]
[protect]
keepalive_timeout = "120s"
keepalive_requests = 1000000
[log]
access = "off"
level = "warn"
[[site]]
name = "perf"
hosts = ["*"]
pool = "origin"
[[pool]]
name = "origin"
$4
  [[pool.origin]]
  addr = "127.0.0.1:$3"
CONF
}
candidate onair-plain 8354 8360 ''
candidate onair-tls 8355 8361 "tls = true
sni = \"origin.perf\"
ca_file = \"$DIR/ca.pem\""
cargo build --locked --release --bin onair
taskset -c 0 nginx -c "$DIR/front.conf" -p "$DIR/" -e "$DIR/logs/error.log" &
FRONT=$!
trap 'kill $FRONT 2>/dev/null || true' EXIT
sleep 1
"$HARNESS/run-perf.sh" --proxies nginx "${@:-pass}" \
  --candidate onair-plain "$PWD/target/release/onair run -c $DIR/onair-plain.toml" 8354 \
  --candidate onair-tls "$PWD/target/release/onair run -c $DIR/onair-tls.toml" 8355
