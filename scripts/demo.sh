#!/usr/bin/env bash
# The main job: start a vhost-vtpm daemon (libtpms engine), talk to it over vhost-user like a
# guest driver would, and print what the TPM answered.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
work=$(mktemp -d)
trap 'kill "$daemon" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
./target/release/vhost-vtpm --socket-path "$work/vtpm.sock" --state-dir "$work/state" \
  --log-level info 2>"$work/daemon.log" &
daemon=$!
./target/release/examples/harness_demo "$work/vtpm.sock"
kill -TERM "$daemon"; wait "$daemon"
echo "--- daemon log ---"; cat "$work/daemon.log"
