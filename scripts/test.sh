#!/usr/bin/env bash
# Runs every test: set-up first (idempotent), then formatting, the MSRV and lints, then the whole
# workspace test suite (unit tests, daemon integration tests, and the end-to-end tests), then
# every fuzz target for 15 s on its committed corpus (scripts/fuzz.sh --ci, docs/FUZZING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
./scripts/check-msrv.sh
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --release --no-fail-fast -- --show-output 2>&1 | tee target/test-output.txt
./scripts/fuzz.sh --ci
