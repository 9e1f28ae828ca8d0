#!/usr/bin/env bash
# The local fleet: one sample origin and two regions (hn, hcm) of one shield and two edges each,
# every node a plain onair process on its own 127.0.0.x address (deploy/fleet/README.md), and,
# where nats-server is installed (scripts/setup.sh installs it), one NATS JetStream server per
# region, clustered: the fleet control plane (onair fleet ...).
#
#   scripts/fleet.sh up       start whatever of the fleet is not running, and print what to try
#   scripts/fleet.sh status   each process up or down, and what each node's /status says
#   scripts/fleet.sh tour     shared misses, a lost shield, a lost origin: explained and run
#   scripts/fleet.sh down     stop the whole fleet (SIGTERM, then wait)
#
# Builds nothing: it runs $ONAIR_BIN, else the binary the running fleet was started with, else
# target/release/onair, else target/debug/onair.
# Runtime files (configs, pids, logs, caches, the admin token) go to $ONAIR_FLEET_DIR,
# default /tmp/onair-fleet; `down` keeps them, so caches survive a restart as on real nodes.
set -euo pipefail

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# The runtime directory is resolved against the caller's directory, before the cd below.
DIR=${ONAIR_FLEET_DIR:-/tmp/onair-fleet}
case $DIR in
  /*) ;;
  *) DIR=$PWD/$DIR ;;
esac
cd "$(dirname "$0")/.."
ROOT=$PWD

# The host every edge is asked for in the guide and the tour: the host is part of the cache
# key, so one host makes one object across the whole fleet.
HOST=news.onair.test
ORIGIN_ADDR=127.0.0.10:8000
# name, role, region, address; shields first, so that an edge starts with its shields up.
NODES=(
  "shield-hn  shield hn  127.0.0.21"
  "shield-hcm shield hcm 127.0.0.22"
  "edge-hn-1  edge   hn  127.0.0.31"
  "edge-hn-2  edge   hn  127.0.0.32"
  "edge-hcm-1 edge   hcm 127.0.0.41"
  "edge-hcm-2 edge   hcm 127.0.0.42"
)
EDGES=(edge-hn-1 edge-hn-2 edge-hcm-1 edge-hcm-2)
# The fleet bus: one NATS server per region (name, address), routed into one cluster.
NATS=("nats-hn 127.0.0.51" "nats-hcm 127.0.0.52")
NATS_URLS="nats://127.0.0.51:4222,nats://127.0.0.52:4222"
NATS_BIN=""
for candidate in "$(command -v nats-server 2>/dev/null || true)" /usr/sbin/nats-server; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    NATS_BIN=$candidate
    break
  fi
done
SHIELDS=(shield-hn shield-hcm)
TOKEN_FILE=$DIR/admin.token
# Every address of the fleet is on loopback: curl must never send it to a configured proxy.
export no_proxy='*' NO_PROXY='*'

say() { printf '%s\n' "$*"; }
die() {
  printf 'fleet: %s\n' "$*" >&2
  exit 1
}

# The fields of one NODES line, into node_name, node_role, node_region, node_ip.
node_fields() {
  local line
  for line in "${NODES[@]}"; do
    read -r node_name node_role node_region node_ip <<<"$line"
    [ "$node_name" = "$1" ] && return 0
  done
  die "no node named $1"
}

node_ip() {
  node_fields "$1"
  printf '%s' "$node_ip"
}

# The binary `up` runs: $ONAIR_BIN, else the one the running fleet was started with (so that
# restarting a node after the tour runs what the others run), else a release build, else a
# debug build.
find_bin() {
  if [ -n "${ONAIR_BIN:-}" ]; then
    BIN=$ONAIR_BIN
  elif [ -s "$DIR/bin" ] && [ -x "$(cat "$DIR/bin")" ]; then
    BIN=$(cat "$DIR/bin")
  elif [ -x target/release/onair ]; then
    BIN=target/release/onair
  elif [ -x target/debug/onair ]; then
    BIN=target/debug/onair
  else
    die "no onair binary: build one (cargo build --release) or set ONAIR_BIN"
  fi
  if [ ! -f "$BIN" ] || [ ! -x "$BIN" ]; then die "$BIN is not an executable file"; fi
  # The processes outlive this script and must not depend on the directory it ran in.
  case $BIN in
    /*) ;;
    *) BIN=$ROOT/$BIN ;;
  esac
}

# The pid of a running fleet process, or nothing. A pid file can outlive its process (a crash,
# a reboot) and the pid be reused: the process must also be the one the file was written for.
live_pid() {
  local name=$1 pid marker
  [ -f "$DIR/$name/pid" ] || return 0
  pid=$(cat "$DIR/$name/pid")
  case $pid in '' | *[!0-9]*) return 0 ;; esac
  if [ "$name" = origin ]; then
    marker="sample-origin --listen $ORIGIN_ADDR"
  elif [ "${name#nats-}" != "$name" ]; then
    marker="-sd $DIR/$name/store"
  else
    marker="run -c $DIR/$name/onair.toml"
  fi
  if kill -0 "$pid" 2>/dev/null && ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "$marker"; then
    printf '%s' "$pid"
  fi
}

# Starts a process in its own session, so that closing the terminal (SIGHUP) or a Ctrl-C in it
# does not reach the fleet; without setsid (macOS), nohup at least keeps SIGHUP away.
launch() {
  local name=$1
  shift
  local launcher=(nohup)
  command -v setsid >/dev/null 2>&1 && launcher=(setsid)
  "${launcher[@]}" "$@" >"$DIR/$name/out.log" 2>&1 </dev/null &
  printf '%s\n' "$!" >"$DIR/$name/pid"
}

# Fails unless nothing listens on ip:port. A node whose address is taken does not exit: onair
# logs that it will try again, then runs on without that listener, and another process (a
# fleet started from another ONAIR_FLEET_DIR) would answer for it.
must_be_free() {
  local rc=0
  curl -s -o /dev/null --max-time 1 "http://$1:$2/" || rc=$?
  # 7: nothing accepted the connection.
  [ "$rc" -eq 7 ] || die "$1:$2 is in use by another process (another fleet? see: ss -ltnp | grep $1:$2)"
}

# Waits until the process `name` answers: the origin on its /healthz; a node on its admin
# /healthz, which must name the node's pid (not another process on that address), then on
# /readyz (config loaded, cache open). Fails with the end of the process's log if it died or
# never answered (a debug build with a large disk cache can take seconds).
wait_answers() {
  local name=$1 base=$2 pid answer
  pid=$(cat "$DIR/$name/pid")
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$DIR/$name/out.log" >&2 || true
      die "$name exited at start (its log: $DIR/$name/out.log); what had started still runs: scripts/fleet.sh down stops it"
    fi
    if answer=$(curl -fsS --max-time 1 "$base/healthz" 2>/dev/null); then
      if [ "$name" = origin ]; then
        return 0
      fi
      if tr -d ' \n' <<<"$answer" | grep -qE "\"pid\":${pid}[,}]" &&
        curl -fsS -o /dev/null --max-time 1 "$base/readyz" 2>/dev/null; then
        return 0
      fi
    fi
    sleep 0.2
  done
  tail -n 20 "$DIR/$name/out.log" >&2 || true
  die "$name does not answer on $base after 20 s (its log: $DIR/$name/out.log); scripts/fleet.sh down stops what runs"
}

start_origin() {
  must_be_free "${ORIGIN_ADDR%:*}" "${ORIGIN_ADDR#*:}"
  launch origin "$BIN" sample-origin --listen "$ORIGIN_ADDR" --name origin
  wait_answers origin "http://$ORIGIN_ADDR"
}

# A NATS server of the fleet bus, routed to the other region's.
start_nats() {
  local name=$1 ip=$2 route
  for route in "${NATS[@]}"; do
    read -r _ route <<<"$route"
    [ "$route" = "$ip" ] || break
  done
  mkdir -p "$DIR/$name"
  launch "$name" "$NATS_BIN" -js -a "$ip" -p 4222 -sd "$DIR/$name/store" \
    --server_name "$name" --cluster_name onair-fleet \
    --cluster "nats://$ip:6222" --routes "nats://$route:6222"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/$ip/4222") 2>/dev/null; then return 0; fi
    kill -0 "$(cat "$DIR/$name/pid")" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$DIR/$name/out.log" >&2 || true
  die "$name did not start (its log: $DIR/$name/out.log)"
}

start_node() {
  local port
  node_fields "$1"
  for port in 8080 9090 9091; do must_be_free "$node_ip" "$port"; done
  launch "$1" "$BIN" run -c "$DIR/$1/onair.toml"
  wait_answers "$1" "http://$node_ip:9091"
}

# Writes a node's config from its role's template. The values land in TOML strings as they
# are, which is why the runtime directory may not hold characters TOML would need escaped.
render() {
  node_fields "$1"
  local conf
  conf=$(<"deploy/fleet/$node_role.toml")
  conf=${conf//'{{NODE}}'/"$node_name"}
  conf=${conf//'{{REGION}}'/"$node_region"}
  conf=${conf//'{{IP}}'/"$node_ip"}
  conf=${conf//'{{DIR}}'/"$DIR/$node_name"}
  conf=${conf//'{{TOKEN}}'/"$TOKEN_FILE"}
  conf=${conf//'{{FLEET}}'/"$(fleet_section)"}
  printf '%s\n' "$conf" >"$DIR/$node_name/onair.toml"
}

# The [fleet] section of every node: the region's NATS server first, the operators' key. Empty
# without nats-server: the fleet then runs without its control plane.
fleet_section() {
  [ -n "$NATS_BIN" ] || return 0
  local own=127.0.0.51 other=127.0.0.52
  if [ "$node_region" = hcm ]; then own=127.0.0.52 other=127.0.0.51; fi
  printf '[fleet]\n# The fleet bus: the region'"'"'s NATS server first (scripts/fleet.sh starts them).\n'
  printf 'servers = ["nats://%s:4222", "nats://%s:4222"]\n' "$own" "$other"
  printf '# Operations signed with %s/operator.key (made by fleet.sh up) are applied.\n' "$DIR"
  printf 'verify_key = ["%s/operators.pub"]\n' "$DIR"
}

cmd_up() {
  find_bin
  case $DIR in *'"'* | *\\* | *$'\n'*)
    die "ONAIR_FLEET_DIR must not contain quotes, backslashes or newlines: $DIR" ;;
  esac
  mkdir -p "$DIR/origin"
  if [ ! -s "$TOKEN_FILE" ]; then
    (umask 077 && head -c 32 /dev/urandom | base64 >"$TOKEN_FILE")
  fi
  if [ -n "$NATS_BIN" ] && [ ! -s "$DIR/operators.pub" ]; then
    command -v openssl >/dev/null 2>&1 || die "openssl is needed to make the operators' key"
    (umask 077 && openssl genpkey -algorithm ed25519 -out "$DIR/operator.key" 2>/dev/null)
    openssl pkey -in "$DIR/operator.key" -pubout -out "$DIR/operators.pub"
  fi

  # Every config is checked before anything starts: a broken template starts nothing.
  local line out
  for line in "${NODES[@]}"; do
    read -r node_name _ <<<"$line"
    mkdir -p "$DIR/$node_name"
    render "$node_name"
    if ! out=$("$BIN" check -c "$DIR/$node_name/onair.toml" 2>&1); then
      die "$DIR/$node_name/onair.toml:"$'\n'"$out"
    fi
  done
  printf '%s\n' "$BIN" >"$DIR/bin"

  say "onair fleet in $DIR, binary $BIN"
  if [ -z "$NATS_BIN" ]; then
    say "  (no nats-server: the fleet runs without its control plane; scripts/setup.sh installs it)"
  fi
  local nats_line
  for nats_line in "${NATS[@]}"; do
    [ -n "$NATS_BIN" ] || break
    read -r node_name node_ip <<<"$nats_line"
    if [ -n "$(live_pid "$node_name")" ]; then
      printf '  %-11s already running\n' "$node_name"
      continue
    fi
    start_nats "$node_name" "$node_ip"
    printf '  %-11s nats://%s:4222 (pid %s)\n' "$node_name" "$node_ip" "$(cat "$DIR/$node_name/pid")"
  done
  if [ -n "$(live_pid origin)" ]; then
    say "  origin      already running"
  else
    start_origin
    say "  origin      http://$ORIGIN_ADDR (pid $(cat "$DIR/origin/pid"))"
  fi
  for line in "${NODES[@]}"; do
    read -r node_name _ _ node_ip <<<"$line"
    if [ -n "$(live_pid "$node_name")" ]; then
      printf '  %-11s already running\n' "$node_name"
      continue
    fi
    start_node "$node_name"
    printf '  %-11s http://%s:8080 (pid %s)\n' "$node_name" "$node_ip" "$(cat "$DIR/$node_name/pid")"
  done
  guide
}

guide() {
  cat <<EOF

Readers talk to the edges; each edge asks its region's shield (the other region's while its
own is down), and only the shields talk to the origin. Each node has its own address, all with
the same ports: :8080 traffic, :9090 metrics, :9091 admin (token in $TOKEN_FILE).

  hn:  edge-hn-1  127.0.0.31, edge-hn-2  127.0.0.32 -> shield-hn  127.0.0.21 -> origin $ORIGIN_ADDR
  hcm: edge-hcm-1 127.0.0.41, edge-hcm-2 127.0.0.42 -> shield-hcm 127.0.0.22 -> origin $ORIGIN_ADDR

Try it (the host is part of the cache key: send every edge the same one):
  curl -si -H 'Host: $HOST' http://127.0.0.31:8080/news/ket-qua-bau-cu | grep -i cache-status
  curl -si -H 'Host: $HOST' http://127.0.0.32:8080/news/ket-qua-bau-cu | grep -i cache-status
  curl -s http://127.0.0.21:9090/metrics | grep '^onair_origin_requests_total'
  curl -s -H "Authorization: Bearer \$(cat $TOKEN_FILE)" http://127.0.0.31:9091/status
  a browser on http://127.0.0.31:8080/ (that host keys its own copies)

  onair fleet purge --tag home --key $DIR/operator.key --servers $NATS_URLS
                             one signed purge, applied by every node (with nats-server)
  scripts/fleet.sh tour      shared misses, a fleet purge, a lost shield, a lost origin
  scripts/fleet.sh status    what runs, and what each node sees
  scripts/fleet.sh down      stop it all
Logs: $DIR/<node>/out.log (the process), $DIR/<node>/access.log (its requests).
EOF
}

# Stops one process: SIGTERM, then waits while it drains (grace_period is 2s) and exits.
stop_one() {
  local name=$1 pid
  pid=$(live_pid "$name")
  rm -f "$DIR/$name/pid"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    printf '  %-11s still runs 10 s after SIGTERM: SIGKILL\n' "$name"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  printf '  %-11s stopped (pid %s)\n' "$name" "$pid"
}

cmd_down() {
  # Outside in, as a fleet is drained: the edges, then the shields, then the origin; the
  # processes of a group stop together.
  local group name pid pids
  for group in "${EDGES[*]}" "${SHIELDS[*]}" origin "nats-hn nats-hcm"; do
    pids=()
    for name in $group; do
      stop_one "$name" &
      pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
  done
  # The next `up` chooses its binary afresh.
  rm -f "$DIR/bin"
  say "fleet stopped; its caches and logs stay in $DIR (rm -rf it to start afresh)"
}

# GET on a node's admin API with the fleet's token.
admin_get() {
  curl -fsS --max-time 2 -H "Authorization: Bearer $(cat "$TOKEN_FILE")" "http://$(node_ip "$1"):9091$2"
}

# One line from GET /status: region, config version, each pool's origins with their state,
# cached objects per tier.
STATUS_JQ='"\(.region) v\(.config_version)  "
  + ([.pools[] | "\(.name): " + ([.origins[] | "\(.name) \(.state)"] | join(", "))] | join("; "))
  + "  cached: \(.cache.memory.objects) mem, \(.cache.disk.objects // 0) disk"'

cmd_status() {
  local line pid summary
  pid=$(live_pid origin)
  if [ -n "$pid" ]; then
    printf '%-11s up    pid %-7s %s\n' origin "$pid" "http://$ORIGIN_ADDR"
  else
    printf '%-11s DOWN\n' origin
  fi
  for line in "${NODES[@]}"; do
    read -r node_name _ _ node_ip <<<"$line"
    pid=$(live_pid "$node_name")
    if [ -z "$pid" ]; then
      printf '%-11s DOWN\n' "$node_name"
      continue
    fi
    printf '%-11s up    pid %-7s http://%s:8080' "$node_name" "$pid" "$node_ip"
    if ! summary=$(admin_get "$node_name" /status 2>/dev/null); then
      printf '  (its admin API does not answer)\n'
    elif command -v jq >/dev/null 2>&1; then
      printf '  %s\n' "$(jq -r "$STATUS_JQ" <<<"$summary")"
    else
      printf '  answers; /status:\n%s\n' "$summary"
    fi
  done
}

# --- the tour -----------------------------------------------------------------------------

# A step's title, in bold on a terminal.
step() {
  if [ -t 1 ]; then printf '\n\033[1m%s\033[0m\n' "$*"; else printf '\n%s\n' "$*"; fi
}
# Prints a command as the reader would type it.
shows() { printf '  $ %s\n' "$*"; }

# GET `path` from a node as a reader: the status and the Cache-Status entries, the
# nearest the origin first (each cache appends its own).
fetch() {
  local name=$1 path=$2 head code statuses
  head=$(curl -s -o /dev/null -D - --max-time 10 -H "Host: $HOST" "http://$(node_ip "$name"):8080$path" | tr -d '\r') || true
  code=$(sed -n '1s/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p' <<<"$head")
  statuses=$(grep -i '^cache-status:' <<<"$head" | sed 's/^[^:]*: *//' | paste -sd '|' - | sed 's/|/  |  /g') || true
  printf '  %-11s %s  %s\n' "$name" "${code:-(no answer)}" "${statuses:-(no Cache-Status)}"
}

# Requests a node made to the origin pool (misses, revalidations), from its metrics.
origin_requests() {
  { curl -s --max-time 2 "http://$(node_ip "$1"):9090/metrics" || true; } |
    awk '/^onair_origin_requests_total\{/ && /pool="origin"/ { n += $NF } END { print n + 0 }'
}

# Answers a node served stale (onair_stale_served_total, every reason), from its metrics.
stale_served() {
  { curl -s --max-time 2 "http://$(node_ip "$1"):9090/metrics" || true; } |
    awk '/^onair_stale_served_total/ { n += $NF } END { print n + 0 }'
}

# An origin's state as a node sees it (up, down, ejected, trial), from its /status.
origin_state() {
  admin_get "$1" /status 2>/dev/null | tr -d '\n ' |
    grep -o "\"name\":\"$2\"[^}]*\"state\":\"[a-z]*\"" |
    sed 's/.*"state":"\([a-z]*\)"/\1/' | head -n 1
}

# Waits until every node after the first two arguments sees `origin` in `state` (up to 20 s).
wait_state() {
  local origin=$1 state=$2 name seen
  shift 2
  for _ in $(seq 1 40); do
    seen=0
    for name in "$@"; do
      [ "$(origin_state "$name" "$origin")" = "$state" ] && seen=$((seen + 1))
    done
    [ "$seen" -eq $# ] && return 0
    sleep 0.5
  done
  say "  (not every node saw $origin $state within 20 s)"
}

cmd_tour() {
  local name missing=() run article other fresh n total=0 pid wait_s t0
  for name in origin "${SHIELDS[@]}" "${EDGES[@]}"; do
    [ -n "$(live_pid "$name")" ] || missing+=("$name")
  done
  [ ${#missing[@]} -eq 0 ] || die "not running: ${missing[*]}; start them with scripts/fleet.sh up"
  # Shield-hn comes back with the binary the fleet runs.
  if [ -s "$DIR/bin" ]; then BIN=$(cat "$DIR/bin"); else find_bin; fi
  # A new URL for every tour, so that the first requests are misses even on a warm fleet: the
  # query string is part of the cache key, and the sample origin ignores it.
  run=$(date +%s)
  article="/news/ket-qua-bau-cu?tour=$run"
  other="/news/hop-bao-chinh-phu?tour=$run"
  fresh="/news/du-bao-thoi-tiet?tour=$run"

  step "1. One object, four edges, two regions"
  say "  Every edge is asked for the same new article. An edge that misses asks its region's"
  say "  shield; the first edge of a region makes its shield miss too, the second finds the"
  say "  shield's copy. The origin sees one request per region. Cache-Status lists the shield's"
  say "  entry, then the edge's."
  # Counted before and after, per node (an indexed array: macOS's bash 3.2 has no other kind).
  local counted=("${SHIELDS[@]}" "${EDGES[@]}") before=() i
  for name in "${counted[@]}"; do before+=("$(origin_requests "$name")"); done
  shows "curl -si -H 'Host: $HOST' http://127.0.0.31:8080$article"
  t0=$(date +%s)
  for name in "${EDGES[@]}"; do fetch "$name" "$article"; done
  say "  Requests to the origin during this step (onair_origin_requests_total{pool=\"origin\"}):"
  for i in "${!counted[@]}"; do
    n=$(($(origin_requests "${counted[$i]}") - before[i]))
    total=$((total + n))
    printf '    %-11s %s\n' "${counted[$i]}" "$n"
  done
  say "    all nodes   $total   (four edge misses; one origin request per region)"
  say "  And again: every edge now answers from its own copy."
  for name in "${EDGES[@]}"; do fetch "$name" "$article"; done

  if [ -n "$NATS_BIN" ]; then
    step "1b. One signed purge for the whole fleet"
    say "  An operator signs a purge with the operators' key and publishes it to the bus; no"
    say "  node's admin API is involved. Every node applies it; the next readers miss again."
    local published seq
    shows "onair fleet purge --url 'http://$HOST$article' --key $DIR/operator.key --servers $NATS_URLS"
    published=$("$BIN" fleet purge --url "http://$HOST$article" --key "$DIR/operator.key" --servers "$NATS_URLS")
    say "  $published"
    seq=$(sed -n 's/.*"seq":\([0-9]*\).*/\1/p' <<<"$published")
    shows "onair fleet wait $seq --servers $NATS_URLS"
    "$BIN" fleet wait "$seq" --timeout 20 --servers "$NATS_URLS" | sed 's/^/  /' || true
    t0=$(date +%s)
    for name in "${EDGES[@]}"; do fetch "$name" "$article"; done
  fi

  step "2. A shield dies"
  pid=$(live_pid shield-hn)
  shows "kill -KILL $pid   # shield-hn"
  kill -KILL "$pid"
  say "  The hn edges go on serving: what they hold is a hit, and a miss goes to the other"
  say "  region's shield (a refused connection moves a request to the next origin at once)."
  for name in edge-hn-1 edge-hn-2; do fetch "$name" "$other"; done
  wait_state shield-hn down edge-hn-1 edge-hn-2
  say "  Their health checks mark it down: edge-hn-1 sees shield-hn $(origin_state edge-hn-1 shield-hn)," \
    "shield-hcm $(origin_state edge-hn-1 shield-hcm)."
  say "  Bring it back: its disk tier kept its copies, and the edges take it back once its"
  say "  health checks pass."
  shows "scripts/fleet.sh up   # starts whatever is not running"
  start_node shield-hn
  wait_state shield-hn up edge-hn-1 edge-hn-2
  say "  edge-hn-1 sees shield-hn $(origin_state edge-hn-1 shield-hn). shield-hn itself, asked directly:"
  fetch shield-hn "$article"

  step "3. The origin dies"
  pid=$(live_pid origin)
  shows "kill -KILL $pid   # the origin"
  kill -KILL "$pid"
  wait_state origin down "${SHIELDS[@]}"
  say "  The shields see it down: shield-hn says origin $(origin_state shield-hn origin)."
  say "  The article is fresh for 60 s (max-age=60, stale-if-error=604800); until then every"
  say "  edge just answers from its copy. Past it, each edge asks its shield, whose own copy"
  say "  is stale too and whose origin fails: the shield answers with its stale copy"
  say "  (detail=stale-if-error), here a 304 since the edge's copy is the same, and the edge"
  say "  serves its own (fwd=stale; fwd-status=304)."
  wait_s=$((t0 + 66 - $(date +%s)))
  if [ "$wait_s" -gt 0 ]; then
    say "  Waiting ${wait_s} s for the copies to go stale..."
    sleep "$wait_s"
  fi
  for name in "${EDGES[@]}"; do fetch "$name" "$article"; done
  say "  Something no node ever cached cannot be served: the maintenance page, 503 with"
  say "  Retry-After (never a bare 502)."
  fetch edge-hcm-1 "$fresh"
  say "  Stale answers the shields gave (onair_stale_served_total):"
  for name in "${SHIELDS[@]}"; do
    printf '    %-11s %s\n' "$name" "$(stale_served "$name")"
  done

  step "End of the tour"
  say "  The origin is still down: scripts/fleet.sh up brings it back, scripts/fleet.sh down"
  say "  stops everything. Logs: $DIR/<node>/out.log and access.log."
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  tour) cmd_tour ;;
  *) usage ;;
esac
