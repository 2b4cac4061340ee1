#!/usr/bin/env bash
# The power-loss campaign: vhost-vtpm's state directory, and swtpm's, on a disk that keeps
# only what was synced (testbed/powerloss/disk.py), the power cut at a random moment of a
# workload of NV writes and counter increments, ROUNDS times each (default 1000); prints one
# summary line per program. CI runs 100 rounds of vhost-vtpm's and 10 of swtpm's, the control
# (tests/powerloss.rs); the results of campaigns are recorded in docs/POWERLOSS.md.
#
#   scripts/powerloss.sh [ROUNDS]
#
# Needs root (the disk is a FUSE mount) and scripts/setup.sh (python3-fusepy, swtpm).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-1000}"
VTPM_POWERLOSS_ROUNDS="$rounds" cargo test --release -p vhost-vtpm --test powerloss -- \
    --nocapture --test-threads 1 2>&1 |
    grep -oE '(power-loss test|test result|round [0-9]+ \(seed [0-9]+\): [0-9]+ acknowledged).*' || true
