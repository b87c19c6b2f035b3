#!/usr/bin/env bash
# `clattn devices --peak` measures positive FMA and copy rates, caches them per device
# (a second run reads the same figures back), and `clattn bench --device all` ends with
# the side-by-side table whose fractions use those peaks.
#   test_peak.sh CLATTN_EXE WORK_DIR
set -euo pipefail
exe=$1 work=$2
rm -rf "$work"
mkdir -p "$work"
export CLATTN_CACHE_DIR=$work/cache   # a fresh cache: the first run must measure

first=$("$exe" devices --peak --json)
second=$("$exe" devices --peak --json)
python3 - "$first" "$second" <<'PY'
import json, sys
a, b = (json.loads(s) for s in sys.argv[1:3])
assert a, "no devices"
for d in a:
    assert d["peak_gflops"] > 0.1 and d["peak_gbps"] > 0.01, d
assert [(d["peak_gflops"], d["peak_gbps"]) for d in a] == [(d["peak_gflops"], d["peak_gbps"]) for d in b], \
    "the second run did not read the cached figures"
print("peaks:", [(d["name"], d["peak_gflops"], d["peak_gbps"]) for d in a])
PY
"$exe" devices --peak | grep -q "GB/s (copy), cached" || { echo "text output does not say cached"; exit 1; }
ls "$CLATTN_CACHE_DIR"/peak-*.txt >/dev/null

out=$("$exe" bench --device all --shape 1,2,2,16,16,16 --runs 2 --warmup 1 --json "$work/b.jsonl" 2>/dev/null)
echo "$out" | tail -n 4
echo "$out" | grep -q "^side by side" || { echo "no side-by-side table"; exit 1; }
row=$(echo "$out" | grep -A2 "^case 1,2,2,16,16,16" | tail -n 1)
# the fastest device's row (every row, with one device) has "x fastest" = 1.00
echo "$out" | grep -A3 "^case" | grep -q " 1\.00$" || { echo "no row with x fastest = 1.00: $row"; exit 1; }
grep -q '"peak_gflops"' "$work/b.jsonl" || { echo "bench JSON lacks the peak"; exit 1; }
