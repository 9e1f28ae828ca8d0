#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine with Rust lacks to build and test onair:
# cmake (Pingora builds zlib-ng with it), a C compiler (ring, zstd), promtool (the metrics
# test runs `promtool check metrics`), node (a test runs the challenge page's script) and
# nats-server (the fleet tests run NATS JetStream).
# Idempotent: installs only what is missing.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The attack-mode test runs the challenge page's JavaScript.
command -v node >/dev/null 2>&1 || need+=(nodejs)
# The fleet tests start real NATS JetStream servers (Debian installs it in /usr/sbin).
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "onair setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "onair setup: cargo is missing; install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi
