#!/bin/sh
# Build the libFuzzer targets of tests/fuzz with clang (ASan + UBSan, build-fuzz) and run
# each for SECONDS (default 60) on a copy of its seed corpus, so the repository's corpus
# only changes by hand. Any crash, leak or sanitizer report fails the script; the input
# that caused it is left as build-fuzz/crashes/<target>/crash-*. To keep it as a
# regression test: fix the bug, copy the file into tests/fuzz/corpus/<target>/ under a
# name saying what it covers; the replay test fuzz_replay_<name> then runs it in every
# build.
#
# Usage: scripts/fuzz.sh [SECONDS]     Environment: CC (default clang), JOBS (default 2)
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${1:-60}
jobs=${JOBS:-2}
targets="fuzz_npy fuzz_problem fuzz_cli_args fuzz_tuning_file"

start=$(date +%s)
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER="${CC:-clang}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCLATTN_FUZZ=ON >/dev/null
# shellcheck disable=SC2086
cmake --build build-fuzz -j "$jobs" --target $targets

export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
failed=""
for t in $targets; do
    work=build-fuzz/corpus/$t
    crashes=build-fuzz/crashes/$t
    rm -rf "$work" "$crashes"
    mkdir -p "$work" "$crashes"
    cp "$root/tests/fuzz/corpus/$t/"* "$work/"
    echo "== $t for $seconds s"
    # -close_fd_mask=1: the CLI parsers print usage text on stdout; errors and sanitizer
    # reports stay on stderr. -rss_limit_mb: the targets need little memory, so growth
    # means a bug (a huge allocation from a bad size).
    if ! "build-fuzz/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
         -close_fd_mask=1 -print_final_stats=1 -artifact_prefix="$crashes/" "$work" \
         > "build-fuzz/$t.log" 2>&1; then
        failed="$failed $t"
        tail -n 60 "build-fuzz/$t.log"
        echo "== $t FAILED; input(s): $(ls "$crashes")"
    else
        grep -E "^stat::number_of_executed_units|^stat::new_units_added" "build-fuzz/$t.log" || true
    fi
done
end=$(date +%s)
echo "== fuzz.sh $seconds took $((end - start)) s"
if [ -n "$failed" ]; then
    echo "== crashes in:$failed"
    exit 1
fi
