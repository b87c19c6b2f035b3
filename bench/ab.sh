#!/usr/bin/env bash
# A/B of two clattn builds on one machine: the same sweep, the builds taking turns, so
# both see the same load. Prints, per case and path, each build's median over the rounds
# of its per-round median, and B's time over A's.
#   bench/ab.sh A_CLATTN B_CLATTN [SWEEP] [ROUNDS] [-- extra bench options]
#   bench/ab.sh /tmp/old/clattn build/clattn bench/default.sweep 3
set -euo pipefail
a=$1 b=$2
sweep=${3:-$(dirname "$0")/default.sweep}
rounds=${4:-3}
shift $(( $# < 4 ? $# : 4 ))
[ "${1:-}" = "--" ] && shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  for side in a b; do
    exe=$a
    [ "$side" = b ] && exe=$b
    "$exe" bench --sweep "$sweep" --json "$out/$side.$r.jsonl" "$@" >/dev/null 2>"$out/err" ||
      { cat "$out/err" >&2; exit 1; }
  done
done
python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
MEASURED = {"median_ms", "min_ms", "max_ms", "runs", "gflops", "gbps", "device_bytes",
            "device", "platform", "driver", "path", "requested_path", "ratio"}
def label(rec):
    parts = []
    for k, v in rec.items():
        if k in MEASURED or v in (None, "none"):
            continue
        if isinstance(v, dict):
            v = ",".join(str(x) for x in v.values())
        parts.append(str(v))
    return " ".join(parts)
def load(side):
    times = {}
    order = []
    for r in range(1, rounds + 1):
        for line in open("%s/%s.%d.jsonl" % (out, side, r)):
            rec = json.loads(line)
            if rec.get("median_ms") is None:
                continue
            key = (label(rec), rec.get("path", "?"))
            if key not in times:
                order.append(key)
            times.setdefault(key, []).append(rec["median_ms"])
    return times, order
ta, order = load("a")
tb, _ = load("b")
print("%-60s %-10s %10s %10s %7s" % ("case", "path", "A ms", "B ms", "B/A"))
ratios = []
for key in order:
    if key not in tb:
        continue
    ma, mb = statistics.median(ta[key]), statistics.median(tb[key])
    ratios.append(mb / ma)
    print("%-60s %-10s %10.3f %10.3f %7.3f" % (key[0][:60], key[1][:10], ma, mb, mb / ma))
if ratios:
    print("geometric mean of B/A over %d rows: %.3f" % (
        len(ratios), statistics.geometric_mean(ratios)))
EOF
