#!/usr/bin/env bash
# bench/gpu_check.sh's logic without a GPU: its quick mode on the default device (forms
# forced through tuning files and checked against the reference, a short tune, the bench
# with and without the tuned records), SDPA rows from a file so the summary's ratios are
# checked, and its refusals (no OUTDIR; no clattn executable).
#   test_gpu_check.sh SOURCE_DIR CLATTN_EXE WORK_DIR CACHE_DIR
set -euo pipefail
src=$1 exe=$2 work=$3 cache=$4
rm -rf "$work"
mkdir -p "$work"

# no OUTDIR: usage, exit 2
if bash "$src/bench/gpu_check.sh" >/dev/null 2>&1; then echo "ran without OUTDIR"; exit 1; fi
set +e
bash "$src/bench/gpu_check.sh" 2>/dev/null
rc=$?
set -e
[ "$rc" = 2 ] || { echo "no OUTDIR: exit $rc, want 2"; exit 1; }

# no executable: exit 1, and still a summary that says so
set +e
GPU_CHECK_EXE=$work/missing bash "$src/bench/gpu_check.sh" "$work/none" >/dev/null 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || { echo "missing clattn: exit $rc, want 1"; exit 1; }
python3 - "$work/none/gpu_check.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert any(x["step"] == "clattn" and x["status"] == "failed" for x in s["steps"]), s["steps"]
assert s["cases"] == [], s["cases"]
PY

# SDPA rows for two of the quick sweep's cases (made-up times: the ratios are what is checked)
cat >"$work/torch.jsonl" <<'JSON'
{"device": "fake", "path": "torch-sdpa", "shape": {"B": 1, "Hq": 2, "Hkv": 2, "Lq": 64, "Lk": 64, "D": 32, "Dv": 32}, "causal": "none", "dtype": "f32", "kv_quant": "none", "median_ms": 0.5, "min_ms": 0.5, "max_ms": 0.5, "runs": 20, "gflops": 1, "gbps": 1, "device_bytes": 0}
{"device": "fake", "path": "torch-sdpa", "shape": {"B": 1, "Hq": 4, "Hkv": 4, "Lq": 1, "Lk": 256, "D": 32, "Dv": 32}, "causal": "none", "dtype": "f16", "kv_quant": "none", "median_ms": 0.25, "min_ms": 0.25, "max_ms": 0.25, "runs": 20, "gflops": 1, "gbps": 1, "device_bytes": 0}
JSON
GPU_CHECK_QUICK=1 GPU_CHECK_DEVICE=${GPU_CHECK_DEVICE:-0} GPU_CHECK_EXE=$exe GPU_CHECK_CACHE=$cache \
    GPU_CHECK_TUNE_S=3 GPU_CHECK_TORCH_JSONL=$work/torch.jsonl bash "$src/bench/gpu_check.sh" "$work/out"
python3 - "$work/out/gpu_check.json" <<'PY'
import json, re, sys
s = json.load(open(sys.argv[1]))
st = {x["step"]: x for x in s["steps"]}
assert any("baseline" in v for v in s["variants"].values()), s["variants"]
for name in ("peak", "variants", "bench-form-gpu", "check-fused-gpu", "check-fused-gpu-mm", "check-decode-gpu", "check-auto-fused",
             "check-auto-decode", "tune", "bench", "bench-tuned", "torch"):
    assert st.get(name, {}).get("status") == "ok", (name, st.get(name))
for name in ("check-fused-gpu", "check-fused-gpu-mm", "check-decode-gpu"):
    # every call of a forced check logged that form's kernel, and nothing was outside
    n = int(re.search(r"\[(\d+) calls logged the form\]", st[name]["note"]).group(1))
    assert n >= 1 and " 0 outside" in st[name]["note"], st[name]
assert len(s["cases"]) == 4, s["cases"]
assert s["copy_read_gbps"] and s["copy_read_gbps"] > 0, s
full, causal, dec, kv = s["cases"]
assert full["causal"] == "none" and causal["causal"] == "top-left" and kv["kv_quant"] == "int8"
assert abs(full["speed_vs_torch"] - round(0.5 / full["clattn_best_ms"], 3)) < 1e-3, full
assert full["clattn_best_ms"] == min(full["clattn_ms"], full["clattn_tuned_ms"]), full
assert abs(causal["causal_over_full"] - round(causal["clattn_ms"] / full["clattn_ms"], 3)) < 1e-3, causal
assert causal["speed_vs_torch"] is None  # no SDPA row for it
# the earlier GPU form timed on the prefill cases only
assert full["fused_gpu_form_ms"] > 0 and causal["fused_gpu_form_ms"] > 0, (full, causal)
assert dec["fused_gpu_form_ms"] is None and kv["fused_gpu_form_ms"] is None, (dec, kv)
assert abs(dec["speed_vs_torch"] - round(0.25 / dec["clattn_best_ms"], 3)) < 1e-3, dec
for c in (dec, kv):
    assert abs(c["read_fraction"] - round(c["gbps"] / s["copy_read_gbps"], 3)) < 1e-3, c
t = {x["target"].split(" ")[1]: x for x in s["targets"]}
assert t["f32"]["figure"] == full["speed_vs_torch"] and t["f32"]["met"] == (full["speed_vs_torch"] >= 0.8)
assert t["f16"]["figure"] is None and t["f16"]["met"] is None  # no prefill f16 case here
print("gpu_check summary:", {k: v["figure"] for k, v in t.items()})
PY
ls "$work/out"/check-fused-gpu-mm.txt "$work/out"/tuning.json "$work/out"/clattn.jsonl >/dev/null
