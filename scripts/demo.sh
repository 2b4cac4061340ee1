#!/usr/bin/env bash
# The main job: set-up (idempotent), then boot a Linux guest whose TPM is served by
# vhost-vtpm, run tpm2-tools in it and print what they returned.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec ./target/release/vtpm-demo
