#!/usr/bin/env bash
# Flood benchmark: one client flooding at full speed from 127.0.0.1 (wrk, cache-busting query
# strings, so every request is a miss unless something stops it) while a reader from
# 127.0.0.2 fetches a cached page 50 times a second (benches/perf/reader.py). Measured for
# onair with protection off (no rate limit), on (protect.rate with the default tarpit), and the
# same rate limit with tarpit = "0s" (every 429 answered at once: the per-refusal cost), plus an
# idle baseline (the reader alone), interleaved round by round. Reports the reader's success
# rate and p99, the flooder's answers, and onair's CPU per refusal.
#   benches/perf/flood.sh                  # needs nginx, wrk, python3, taskset
#   FLOOD_ROUNDS=3 FLOOD_SECONDS=10 benches/perf/flood.sh
# Placement as in the shared perf harness: onair (one worker) on CPU 1; origin, flooder and
# reader on CPU 0, the flooder at nice 10 so the reader is not queued behind it on the load CPU.
# Results: target/perf/flood-<timestamp>/summary.md and results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/perf/lib.sh
ROUNDS="${FLOOD_ROUNDS:-3}"
SECS="${FLOOD_SECONDS:-10}"
RATE_LIMIT="${FLOOD_RATE:-200/s}"
DIR=/dev/shm/onair-perf-flood
OUT="target/perf/flood-$(date +%Y%m%d-%H%M%S)"
for tool in nginx wrk python3 taskset curl; do
  command -v "$tool" >/dev/null || { echo "flood.sh needs $tool" >&2; exit 2; }
done
cargo build --locked --release --bin onair
rm -rf "$DIR" && mkdir -p "$DIR"/{htdocs,tmp,logs} "$OUT"
head -c 1024 /dev/urandom > "$DIR/htdocs/1k.bin"
echo ok > "$DIR/htdocs/index.html"
static_origin "$DIR/origin.conf" "$DIR" 8380
cat > "$DIR/bust.lua" <<'LUA'
-- Every request a different URL: a cache-busting flood aimed at the origin.
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/1k.bin?bust=" .. math.random(1, 1000000000))
end
LUA
onair_config() {  # NAME PORT METRICS PROTECT
  onair_conf "$DIR/$1.toml" "$DIR/state-$1" 8380 \
    "http = [\"127.0.0.1:$2\"]
metrics = \"127.0.0.1:$3\"" "[cache]
memory = \"256MiB\"
[protect]
keepalive_requests = 1000000
$4"
}
onair_config off 8370 8372 ""
onair_config on 8371 8373 "rate = \"$RATE_LIMIT\""
# The same limit answering every 429 at once: what each refusal costs without the tarpit.
onair_config notarpit 8374 8375 "rate = \"$RATE_LIMIT\"
tarpit = \"0s\""

pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
taskset -c 0 nginx -c "$DIR/origin.conf" -e "$DIR/logs/origin.log" & pids+=($!)
declare -A PID PORT METRICS
PORT[off]=8370 PORT[on]=8371 PORT[notarpit]=8374
METRICS[off]=8372 METRICS[on]=8373 METRICS[notarpit]=8375
TARGETS="off on notarpit"
for t in $TARGETS; do
  taskset -c 1 ./target/release/onair run -c "$DIR/$t.toml" > "$DIR/logs/$t.log" 2>&1 & PID[$t]=$!
  pids+=("${PID[$t]}")
done
for t in $TARGETS; do
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:${PORT[$t]}/1k.bin" -o /dev/null && break; sleep 0.2; done
  curl -fs "http://127.0.0.1:${PORT[$t]}/1k.bin" -o /dev/null || { cat "$DIR/logs/$t.log" >&2; exit 1; }
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($0, m) == 1 {print $2; f=1} END {if (!f) print 0}'; }
freeze_all_but() {  # (its own loop variable: bash would otherwise change the caller's $t)
  local x
  for x in $TARGETS; do
    if [ "$x" = "$1" ]; then kill -CONT "${PID[$x]}"; else kill -STOP "${PID[$x]}"; fi
  done
}

run() {  # SCENARIO TARGET ROUND
  local s=$1 t=$2 r=$3
  local port=${PORT[$t]}
  freeze_all_but "$t"
  sleep 0.5
  local cpu0 lim0 acc0 flood_pid=""
  cpu0=$(cpu_ticks "${PID[$t]}")
  lim0=$(metric "${METRICS[$t]}" 'onair_rate_limited_total{reason="node"}')
  acc0=$(metric "${METRICS[$t]}" 'onair_connections_denied_total{reason="rate"}')
  if [ "$s" != idle ]; then
    taskset -c 0 nice -n 10 wrk -t1 -c50 -d"$((SECS + 1))s" -s "$DIR/bust.lua" \
      "http://127.0.0.1:$port" > "$DIR/wrk-$s-$t-$r.txt" 2>&1 &
    flood_pid=$!
    sleep 0.5
  fi
  local reader
  reader=$(taskset -c 0 python3 benches/perf/reader.py --from 127.0.0.2 --to "127.0.0.1:$port" \
    --path /1k.bin --rate 50 --seconds "$SECS")
  [ -n "$flood_pid" ] && wait "$flood_pid"
  local cpu1 lim1 acc1 flood_rps=0 non2xx=0
  cpu1=$(cpu_ticks "${PID[$t]}")
  lim1=$(metric "${METRICS[$t]}" 'onair_rate_limited_total{reason="node"}')
  acc1=$(metric "${METRICS[$t]}" 'onair_connections_denied_total{reason="rate"}')
  if [ -n "$flood_pid" ]; then
    flood_rps=$(awk '/Requests\/sec/ {print $2}' "$DIR/wrk-$s-$t-$r.txt")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$DIR/wrk-$s-$t-$r.txt")
  fi
  python3 - "$s" "$t" "$r" "$reader" "$cpu0" "$cpu1" "$lim0" "$lim1" "$flood_rps" "${non2xx:-0}" "$acc0" "$acc1" <<'PY' | tee -a "$OUT/results.jsonl"
import json, os, sys
s, t, r, reader, cpu0, cpu1, lim0, lim1, rps, non2xx, acc0, acc1 = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
d = json.loads(reader)
d.update(scenario=s, target=t, round=int(r),
         onair_cpu_s=(int(cpu1) - int(cpu0)) / hz,
         rejected=int(float(lim1) - float(lim0)),
         refused_at_accept=int(float(acc1) - float(acc0)),
         flood_rps=float(rps or 0), flood_non2xx=int(non2xx or 0))
print(json.dumps(d))
PY
}

for r in $(seq "$ROUNDS"); do
  echo "round $r" >&2
  run idle on "$r"
  run flood off "$r"
  run flood on "$r"
  run flood notarpit "$r"
done

python3 - "$OUT/results.jsonl" "$RATE_LIMIT" "$SECS" <<'PY' > "$OUT/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
groups = {}
for row in rows:
    groups.setdefault((row["scenario"], row["target"]), []).append(row)
idle = groups[("idle", "on")]
idle_p99 = med(r["p99_ms"] for r in idle)
print(f"# Flood benchmark (rate limit {sys.argv[2]}, {sys.argv[3]} s per run, medians of {len(idle)} rounds)\n")
print("| run | reader success | reader p50 ms | reader p99 ms | p99 / idle | flooder answers/s | 429s | refused at accept | onair CPU s | CPU µs per refusal |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for key, label in [(("idle", "on"), "idle (reader alone)"), (("flood", "off"), "flood, protection off"), (("flood", "on"), "flood, protection on (rate + tarpit)"), (("flood", "notarpit"), "flood, rate limit, no tarpit")]:
    g = groups[key]
    ok = sum(r["ok"] for r in g); sent = sum(r["sent"] for r in g)
    p99 = med(r["p99_ms"] for r in g)
    rejected = med(r["rejected"] for r in g)
    accept = med(r.get("refused_at_accept", 0) for r in g)
    cpu = med(r["onair_cpu_s"] for r in g)
    # Only meaningful when refusals dominate the node's work (the no-tarpit row).
    per = f"{cpu * 1e6 / (rejected + accept):.1f}" if rejected + accept > 1000 else "-"
    print(f"| {label} | {100 * ok / sent:.2f} % ({ok}/{sent}) | {med(r['p50_ms'] for r in g):.2f} | {p99:.2f} | {p99 / idle_p99:.2f} | {med(r['flood_rps'] for r in g):.0f} | {rejected:.0f} | {accept:.0f} | {cpu:.2f} | {per} |")
PY
cat "$OUT/summary.md"
echo "results: $OUT" >&2
