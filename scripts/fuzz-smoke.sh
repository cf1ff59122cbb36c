#!/usr/bin/env bash
# Runs every cargo-fuzz target briefly on its committed corpus (fuzz/corpus/<target>):
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]   (default 20)
# Needs the nightly toolchain and cargo-fuzz (`cargo +nightly install cargo-fuzz --locked`).
# Exits non-zero on the first crash; libFuzzer writes the input to fuzz/artifacts/<target>/.
# Builds without a sanitizer (-s none): the code under test is safe Rust, where a panic is
# the failure we look for, and the build is several times faster.
# Longer runs: cd fuzz && cargo +nightly fuzz run -s none <target> -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
cargo +nightly fuzz build -s none
for target in frontend selector decoder compile; do
    echo "=== fuzz-smoke: $target for ${seconds}s"
    # A scratch copy of the corpus: inputs found during a smoke run are not kept.
    scratch="$(mktemp -d)"
    log="$(mktemp)"
    cp -r "corpus/$target/." "$scratch/"
    status=0
    cargo +nightly fuzz run -s none "$target" "$scratch" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E "^(Done|stat::number_of_executed_units)" "$log" || true
    rm -rf "$scratch"
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
        echo "fuzz-smoke: $target FAILED (exit $status); reproducer in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz-smoke: all targets ran without a crash"
