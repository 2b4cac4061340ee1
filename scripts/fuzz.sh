#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer, AddressSanitizer) for a bounded time
# each and prints, per target, executions, coverage (libFuzzer's cov/ft) and the corpus size.
# What the targets check and the campaigns run so far: docs/FUZZING.md.
#
#   scripts/fuzz.sh [--seconds N] [--ci] [--keep-going] [TARGET...]
#
#   --seconds N  time per target (default 60)
#   --keep-going after a crash, go on with the next target (and fail at the end)
#   --ci         the short run of scripts/test.sh: 15 s per target, starting from the committed
#                corpus; what it finds new goes to a temporary directory, not into the tree
#   TARGET...    only these targets (default: every target of fuzz/Cargo.toml)
#
# Without --ci the working corpus is target/fuzz-corpus/<target> (kept between runs, seeded
# from the committed fuzz/corpus/<target>); a crash is written to target/fuzz-artifacts/<target>/
# and ends the script with its path and the command that reproduces it. cargo-fuzz is installed
# into target/fuzz-tools on first use. The stable toolchain builds it: RUSTC_BOOTSTRAP=1 lets it
# accept the -Z flags cargo-fuzz passes (no nightly needed).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
ci=0
keep_going=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --ci) ci=1; seconds=15; shift ;;
        --keep-going) keep_going=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

CARGO_FUZZ_VERSION=0.13.2
tools=target/fuzz-tools
cargo_fuzz="$tools/bin/cargo-fuzz"
if ! "$cargo_fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION into $tools" >&2
    cargo install --quiet --locked --root "$tools" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
# The same flags for build and run, so `run` does not rebuild.
build_flags=(--codegen-units 16 --target-dir target/fuzz)
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("$cargo_fuzz" list)
fi

failed=()
started=$(date +%s)
"$cargo_fuzz" build "${build_flags[@]}"
echo "fuzz.sh: built in $(( $(date +%s) - started )) s" >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary="$work/summary"
printf '%-13s %8s %12s %10s %8s %8s\n' target seconds executions exec/s cov ft > "$summary"
for t in "${targets[@]}"; do
    if [ "$ci" = 1 ]; then
        corpus="$work/corpus-$t"
    else
        corpus="target/fuzz-corpus/$t"
    fi
    artifacts="target/fuzz-artifacts/$t"
    mkdir -p "$corpus" "$artifacts" "fuzz/corpus/$t"
    log="$work/$t.log"
    echo "fuzz.sh: $t for $seconds s" >&2
    if ! "$cargo_fuzz" run "${build_flags[@]}" "$t" "$corpus" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" > "$log" 2>&1; then
        cp "$log" "$artifacts/last-failure.log"
        grep -E -A4 "panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)" "$log" | head -n 40 >&2 || true
        tail -n 12 "$log" >&2
        echo "fuzz.sh: the whole log is in $artifacts/last-failure.log" >&2
        crash=$(grep -o "Test unit written to [^ ]*" "$log" | tail -n 1 | cut -d' ' -f5 || true)
        echo "fuzz.sh: $t FAILED${crash:+: $crash}" >&2
        [ -n "$crash" ] && echo "reproduce: RUSTC_BOOTSTRAP=1 $cargo_fuzz run ${build_flags[*]} $t $crash" >&2
        if [ "$keep_going" = 0 ]; then
            exit 1
        fi
        failed+=("$t")
        printf '%-13s CRASH %s\n' "$t" "${crash:-?}" >> "$summary"
        continue
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1 || true)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || echo '?')
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || echo '?')
    printf '%-13s %8s %12s %10s %8s %8s\n' "$t" "$seconds" "$execs" "$rate" "$cov" "$ft" >> "$summary"
done
cat "$summary"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in ${failed[*]}, $(( $(date +%s) - started )) s in all" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, no crash, $(( $(date +%s) - started )) s in all" >&2
