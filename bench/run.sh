#!/usr/bin/env bash
# swarmshare benchmark harness: one command.
#   bench/run.sh [--size-mib N] [--runs N] [--quick] [--write] [--only hash|1to1|4to1|1to4|downloads|tracker ...]
#                [--no-build] [--no-install]   (other options: bench/run.sh --help)
# Builds the release binaries, installs/finds the baselines (aria2, opentracker, mktorrent),
# then runs bench/bench.py, which prints a table of medians (and, with --write, updates BENCHMARKS.md).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BUILD=1
INSTALL=1
ARGS=()
for a in "$@"; do
  case "$a" in
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,5p' "$0"; exec python3 "$HERE/bench.py" --help ;;
    *) ARGS+=("$a") ;;
  esac
done

say() { printf '[bench] %s\n' "$*" >&2; }

if ! command -v python3 >/dev/null; then say "python3 is required"; exit 1; fi

if [ "$BUILD" = 1 ]; then
  say "building release binaries (cargo build --release -p tracker -p client)"
  if ! (cd "$ROOT" && timeout 1800 cargo build --release -p tracker -p client); then
    say "WARNING: the release build FAILED; swarmshare figures will be skipped, baselines still measured"
  fi
fi

# Baselines from Debian packages: tool -> package.
if [ "$INSTALL" = 1 ]; then
  missing=()
  for pair in aria2c:aria2 opentracker:opentracker mktorrent:mktorrent openssl:openssl sha1sum:coreutils; do
    tool="${pair%%:*}"; pkg="${pair#*:}"
    command -v "$tool" >/dev/null || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing ${missing[*]} with apt-get"
      export DEBIAN_FRONTEND=noninteractive
      timeout 600 apt-get install -y "${missing[@]}" >/dev/null 2>&1 \
        || { timeout 600 apt-get update >/dev/null 2>&1 && timeout 600 apt-get install -y "${missing[@]}" >/dev/null 2>&1; } \
        || say "WARNING: apt-get install ${missing[*]} failed"
    else
      say "WARNING: missing ${missing[*]} (not root or no apt-get): install them to get those baselines"
    fi
  fi
  # opentracker's Debian package ships a systemd service; the harness runs its own instance
  # on a free port, so a running service does not interfere.
fi
for t in aria2c opentracker mktorrent openssl sha1sum rqbit; do
  command -v "$t" >/dev/null || say "baseline $t: MISSING"
done

export PYTHONDONTWRITEBYTECODE=1
exec python3 "$HERE/bench.py" "${ARGS[@]}"
