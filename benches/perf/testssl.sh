#!/usr/bin/env bash
# External TLS audit of onair's HTTPS listener with testssl.sh (Debian package "testssl.sh"):
# a private CA and a certificate made here (openssl), onair serving them on 127.0.0.1:8443 in
# front of a local nginx origin, then a full testssl run. Fails when testssl reports any
# finding of severity HIGH or CRITICAL, or any protocol below TLS 1.2 offered.
#   benches/perf/testssl.sh                 # needs testssl, openssl, nginx, curl
# Results: target/perf/testssl-<timestamp>/ (testssl.json, testssl.log, findings.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/perf/lib.sh
for tool in testssl openssl nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "testssl.sh needs $tool" >&2; exit 2; }
done
DIR=/dev/shm/onair-testssl
OUT="target/perf/testssl-$(date +%Y%m%d-%H%M%S)"
cargo build --locked --release --bin onair
rm -rf "$DIR" && mkdir -p "$DIR"/{htdocs,tmp,logs} "$OUT"
echo ok > "$DIR/htdocs/index.html"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 400 \
  -subj "/CN=onair audit CA" -keyout "$DIR/ca.key" -out "$DIR/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=portal.test" \
  -keyout "$DIR/portal.key" -out "$DIR/portal.csr" 2>/dev/null
# A certificate as a public CA would issue it: a year, with a CRL location (testssl rates a
# certificate without CRL or OCSP, or close to expiry, HIGH; those are facts about the test
# certificate, not about onair).
printf 'subjectAltName=DNS:portal.test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\ncrlDistributionPoints=URI:http://ca.portal.test/crl.pem\n' > "$DIR/ext.cnf"
openssl x509 -req -in "$DIR/portal.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
  -CAcreateserial -days 365 -extfile "$DIR/ext.cnf" -out "$DIR/portal.pem" 2>/dev/null
static_origin "$DIR/origin.conf" "$DIR" 8395
onair_conf "$DIR/onair.toml" "$DIR/state" 8395 \
  'http = ["127.0.0.1:8396"]
https = ["127.0.0.1:8443"]' "[tls]
hsts = \"max-age=63072000\"
redirect_http = true
[[tls.cert]]
cert = \"$DIR/portal.pem\"
key = \"$DIR/portal.key\""
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
nginx -c "$DIR/origin.conf" -e "$DIR/logs/origin.log" & pids+=($!)
./target/release/onair run -c "$DIR/onair.toml" > "$DIR/logs/onair.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do
  curl -fsk --resolve portal.test:8443:127.0.0.1 https://portal.test:8443/ -o /dev/null && break
  sleep 0.2
done
# --ip: the name is portal.test (what the certificate says), the address is local.
testssl --quiet --color 0 --warnings off --ip 127.0.0.1 --jsonfile "$OUT/testssl.json" \
  --add-ca "$DIR/ca.pem" https://portal.test:8443 > "$OUT/testssl.log" 2>&1 || true
python3 - "$OUT/testssl.json" <<'PY' | tee "$OUT/findings.txt"
import json, sys
findings = json.load(open(sys.argv[1]))
bad = [f for f in findings if f.get("severity") in ("HIGH", "CRITICAL")]
old = [f for f in findings
       if f.get("id") in ("SSLv2", "SSLv3", "TLS1", "TLS1_1") and "not offered" not in f.get("finding", "")]
offered = [f["id"] for f in findings
           if f.get("id") in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")
           and f.get("finding", "").startswith("offered")]
by_severity = {}
for f in findings:
    by_severity[f.get("severity", "?")] = by_severity.get(f.get("severity", "?"), 0) + 1
print("protocols offered:", ", ".join(offered) or "none")
print("findings by severity:", ", ".join(f"{k} {v}" for k, v in sorted(by_severity.items())))
for f in bad + old:
    print("FAIL", f.get("severity"), f.get("id"), "-", f.get("finding"))
for f in findings:
    if f.get("severity") in ("MEDIUM", "LOW"):
        print("note", f.get("severity"), f.get("id"), "-", f.get("finding"))
sys.exit(1 if bad or old else 0)
PY
echo "results: $OUT" >&2
