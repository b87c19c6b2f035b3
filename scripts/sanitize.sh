#!/bin/sh
# Build clattn with sanitizers and run its tests under them:
#   1. build-asan: AddressSanitizer + UndefinedBehaviorSanitizer (leaks too), every CTest
#      test but those labelled rusticl (see below), the oclgrind tier (oclgrind runs the
#      kernels in its own simulator, so a sanitized host adds nothing there) and the slow tier (the soak's 100,000 cycles
#      check memory use, which the plain build measures); any extra arguments are passed
#      to that ctest run (e.g. -L quick, -R test_api, -j2);
#   2. build-tsan: ThreadSanitizer, test_threads (contexts on concurrent threads) and
#      test_group (a device group's parts on a thread each).
# Any sanitizer report fails the run (halt_on_error, -fno-sanitize-recover).
#
# Usage: scripts/sanitize.sh [CTEST_ARGS...]
# Environment: CC (default gcc for ASan; TSan prefers clang when present, whose runtime
# copes better with the driver's threads), JOBS (default 2), CLATTN_CACHE_DIR (the kernel
# binary cache, shared by both sanitizer builds; default: the normal build's own test
# cache, build/test-cache, when it exists, so kernels its test run compiled are not
# compiled again; else build-kcache). The cache key holds the kernel sources, build
# options, device and driver, never the host build, so one folder serves every build.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-2}
supp=$root/tests/sanitizers
if [ -z "${CLATTN_CACHE_DIR:-}" ]; then
    if [ -d build/test-cache ]; then CLATTN_CACHE_DIR=$root/build/test-cache
    else CLATTN_CACHE_DIR=$root/build-kcache; fi
fi
export CLATTN_CACHE_DIR
mkdir -p "$CLATTN_CACHE_DIR"

# The tests point CLATTN_CACHE_DIR at <build>/test-cache; make that folder the shared one.
share_cache() {
    if [ ! -e "$1/test-cache" ] || [ -L "$1/test-cache" ]; then
        ln -sfn "$CLATTN_CACHE_DIR" "$1/test-cache"
    fi
}

start=$(date +%s)
cc=${CC:-gcc}
echo "== ASan+UBSan build (build-asan, $cc)"
cmake -S . -B build-asan -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCLATTN_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j "$jobs"
share_cache build-asan

# detect_leaks: leaks fail the test, except those lsan.supp names inside the OpenCL stack.
# fast_unwind_on_malloc=0: leak stacks through the uninstrumented driver are otherwise cut
# short, and then suppressions by driver library cannot match them.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:fast_unwind_on_malloc=0"
# print_suppressions=0: the CLI tests check that stderr holds exactly one line per error.
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$supp/ubsan.supp"
# The tests labelled rusticl are left to the plain build: with fast_unwind_on_malloc=0,
# ASan unwinds through libgcc inside malloc, and rusticl's threads then deadlock on the
# unwinder's lock (seen: every thread asleep, one in _Unwind_Find_FDE). They run the same
# host code as the PoCL tests, which do run here.
asan_status=0
(cd build-asan && ctest --output-on-failure -LE 'oclgrind|slow|rusticl' "$@") || asan_status=$?
asan_end=$(date +%s)
echo "== ASan+UBSan tests took $((asan_end - start)) s"

tcc=${CC:-}
if [ -z "$tcc" ]; then
    if command -v clang >/dev/null 2>&1; then tcc=clang; else tcc=gcc; fi
fi
echo "== TSan build (build-tsan, $tcc)"
cmake -S . -B build-tsan -DCMAKE_C_COMPILER="$tcc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCLATTN_SANITIZE=thread >/dev/null
cmake --build build-tsan -j "$jobs" --target test_threads test_group
share_cache build-tsan
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp:print_suppressions=0"
tsan_status=0
(cd build-tsan && ctest --output-on-failure -R '^(test_threads|test_group)$') || tsan_status=$?
end=$(date +%s)
echo "== TSan test took $((end - asan_end)) s; sanitize.sh took $((end - start)) s in all"
# both runs report before either failure ends the script
[ "$asan_status" -eq 0 ] && [ "$tsan_status" -eq 0 ]
