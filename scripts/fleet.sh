#!/usr/bin/env bash
# The local fleet: one sample origin and two regions (hn, hcm) of one shield and two edges each,
# every node a plain onair process on its own 127.0.0.x address (deploy/fleet/README.md).
#
#   scripts/fleet.sh up       start whatever of the fleet is not running, and print what to try
#   scripts/fleet.sh status   each process up or down, and what each node's /status says
#   scripts/fleet.sh tour     tiered caching, a lost shield, a lost origin: run and explained
#   scripts/fleet.sh down     stop the whole fleet (SIGTERM, then wait)
#
# Builds nothing: it runs $ONAIR_BIN, else target/release/onair, else target/debug/onair.
# Runtime files (configs, pids, logs, caches, the admin token) go to $ONAIR_FLEET_DIR,
# default /tmp/onair-fleet; `down` keeps them, so caches survive a restart as on real nodes.
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
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
ORIGIN_IP=127.0.0.10
ORIGIN_ADDR=$ORIGIN_IP:8000
# name, role, region, address; shields before edges, so that an edge starts with its shields up.
NODES=(
  "shield-hn  shield hn  127.0.0.21"
  "shield-hcm shield hcm 127.0.0.22"
  "edge-hn-1  edge   hn  127.0.0.31"
  "edge-hn-2  edge   hn  127.0.0.32"
  "edge-hcm-1 edge   hcm 127.0.0.41"
  "edge-hcm-2 edge   hcm 127.0.0.42"
)
EDGES=(edge-hn-1 edge-hn-2 edge-hcm-1 edge-hcm-2)
SHIELDS=(shield-hn shield-hcm)
TOKEN_FILE=$DIR/admin.token

say() { printf '%s\n' "$*"; }
die() {
  printf 'fleet: %s\n' "$*" >&2
  exit 1
}

# The fields of one NODES line: node_name, node_role, node_region, node_ip.
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

find_bin() {
  if [ -n "${ONAIR_BIN:-}" ]; then
    BIN=$ONAIR_BIN
  elif [ -x target/release/onair ]; then
    BIN=target/release/onair
  elif [ -x target/debug/onair ]; then
    BIN=target/debug/onair
  else
    die "no onair binary: build one (cargo build --release) or set ONAIR_BIN"
  fi
  [ -x "$BIN" ] || die "ONAIR_BIN=$BIN is not an executable file"
  # The processes outlive this script and must not depend on its directory.
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
  if [ "$name" = origin ]; then marker="sample-origin --listen $ORIGIN_ADDR"; else marker="$DIR/$name/onair.toml"; fi
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

# Waits until `url` answers, or fails with the end of the process's log if it died or never
# answered (a debug build with a large disk cache can take a few seconds).
wait_answers() {
  local name=$1 url=$2 pid
  pid=$(cat "$DIR/$name/pid")
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$DIR/$name/out.log" >&2 || true
      die "$name exited at start; its log: $DIR/$name/out.log"
    fi
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.2
  done
  tail -n 20 "$DIR/$name/out.log" >&2 || true
  die "$name does not answer on $url after 20 s; its log: $DIR/$name/out.log"
}

# Writes a node's config from its role's template. The values are plain text in TOML strings:
# the runtime directory must not hold characters that would need escaping there.
render() {
  node_fields "$1"
  local conf
  conf=$(<"deploy/fleet/$node_role.toml")
  conf=${conf//'{{NODE}}'/"$node_name"}
  conf=${conf//'{{REGION}}'/"$node_region"}
  conf=${conf//'{{IP}}'/"$node_ip"}
  conf=${conf//'{{DIR}}'/"$DIR/$node_name"}
  conf=${conf//'{{TOKEN}}'/"$TOKEN_FILE"}
  printf '%s\n' "$conf" >"$DIR/$node_name/onair.toml"
}

cmd_up() {
  find_bin
  case $DIR in *'"'* | *'\'* | *$'\n'*)
    die "ONAIR_FLEET_DIR must not contain quotes, backslashes or newlines: $DIR" ;;
  esac
  mkdir -p "$DIR/origin"
  if [ ! -s "$TOKEN_FILE" ]; then
    (umask 077 && head -c 32 /dev/urandom | base64 >"$TOKEN_FILE")
  fi

  # Every config is checked before anything starts: a broken template starts nothing.
  local line
  for line in "${NODES[@]}"; do
    read -r node_name _ <<<"$line"
    mkdir -p "$DIR/$node_name"
    render "$node_name"
    "$BIN" check -c "$DIR/$node_name/onair.toml" >/dev/null ||
      die "$DIR/$node_name/onair.toml: $("$BIN" check -c "$DIR/$node_name/onair.toml" 2>&1)"
  done

  say "onair fleet in $DIR, binary $BIN"
  if [ -n "$(live_pid origin)" ]; then
    say "  origin      already running"
  else
    launch origin "$BIN" sample-origin --listen "$ORIGIN_ADDR" --name origin
    wait_answers origin "http://$ORIGIN_ADDR/healthz"
    say "  origin      http://$ORIGIN_ADDR (pid $(cat "$DIR/origin/pid"))"
  fi
  for line in "${NODES[@]}"; do
    read -r node_name _ _ node_ip <<<"$line"
    if [ -n "$(live_pid "$node_name")" ]; then
      printf '  %-11s already running\n' "$node_name"
      continue
    fi
    launch "$node_name" "$BIN" run -c "$DIR/$node_name/onair.toml"
    wait_answers "$node_name" "http://$node_ip:9091/readyz"
    printf '  %-11s http://%s:8080 (pid %s)\n' "$node_name" "$node_ip" "$(cat "$DIR/$node_name/pid")"
  done
  guide
}

guide() {
  cat <<EOF

The fleet is up. Readers talk to the edges; each edge asks its region's shield, and only the
shields talk to the origin. Every node has its own address, with the same ports:
:8080 traffic, :9090 metrics, :9091 admin (token in $TOKEN_FILE).

  region hn:  edge-hn-1 127.0.0.31, edge-hn-2 127.0.0.32  ->  shield-hn 127.0.0.21  \\
  region hcm: edge-hcm-1 127.0.0.41, edge-hcm-2 127.0.0.42 -> shield-hcm 127.0.0.22 -> origin $ORIGIN_ADDR

Try (the Host header is part of the cache key: the same one on every edge shares the shields'
copies):
  curl -si -H 'Host: $HOST' http://127.0.0.31:8080/news/ket-qua-bau-cu | grep -i -e cache-status -e x-origin
  curl -si -H 'Host: $HOST' http://127.0.0.32:8080/news/ket-qua-bau-cu | grep -i cache-status
  curl -s http://127.0.0.21:9090/metrics | grep ^onair_origin_requests_total
  curl -s -H "Authorization: Bearer \$(cat $TOKEN_FILE)" http://127.0.0.31:9091/status
  open http://127.0.0.31:8080/ in a browser (keyed by that address, so apart from the above)

  scripts/fleet.sh tour      the guided tour: shared misses, a lost shield, a lost origin
  scripts/fleet.sh status    what runs, and what each node sees
  scripts/fleet.sh down      stop it all
Logs: $DIR/<node>/out.log (process), $DIR/<node>/access.log (requests).
EOF
}

# Stops one process: SIGTERM, then wait for it to drain (grace_period is 2s) and exit.
stop_one() {
  local name=$1 pid
  pid=$(live_pid "$name")
  if [ -z "$pid" ]; then
    rm -f "$DIR/$name/pid"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "  $name (pid $pid) still runs 10 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$DIR/$name/pid"
  printf '  %-11s stopped (pid %s)\n' "$name" "$pid"
}

cmd_down() {
  # Outside in, as a real fleet drains: the edges, then the shields, then the origin. The
  # processes are stopped together in each group, each waited for.
  local name pids=()
  for group in "${EDGES[*]}" "${SHIELDS[*]}" origin; do
    pids=()
    for name in $group; do
      stop_one "$name" &
      pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
  done
}

# GET on a node's admin API with the fleet's token.
admin_get() {
  curl -fsS --max-time 2 -H "Authorization: Bearer $(cat "$TOKEN_FILE")" "http://$(node_ip "$1"):9091$2"
}

cmd_status() {
  local line pid summary
  if [ -n "$(live_pid origin)" ]; then
    printf '%-11s up    pid %-7s http://%s\n' origin "$(live_pid origin)" "$ORIGIN_ADDR"
  else
    printf '%-11s DOWN\n' origin
  fi
  for line in "${NODES[@]}"; do
    read -r node_name _ node_region node_ip <<<"$line"
    pid=$(live_pid "$node_name")
    if [ -z "$pid" ]; then
      printf '%-11s DOWN\n' "$node_name"
      continue
    fi
    if ! summary=$(admin_get "$node_name" /status 2>/dev/null); then
      printf '%-11s up    pid %-7s http://%s:8080  (admin API does not answer)\n' "$node_name" "$pid" "$node_ip"
      continue
    fi
    printf '%-11s up    pid %-7s http://%s:8080' "$node_name" "$pid" "$node_ip"
    if command -v jq >/dev/null 2>&1; then
      printf '  %s\n' "$(jq -r "$STATUS_JQ" <<<"$summary")"
    else
      printf '\n    %s\n' "$summary"
    fi
  done
}

# One line per node from GET /status: region, config version, each pool's origins and state,
# cached objects per tier.
STATUS_JQ='.'

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  tour) cmd_tour ;;
  *) usage ;;
esac
