#!/usr/bin/env python3
"""The summary of bench/gpu_check.sh: OUTDIR/gpu_check.json from the files the script
left in OUTDIR (steps.tsv, peak.json, clattn.jsonl, clattn-tuned.jsonl, torch.jsonl).

    python3 bench/gpu_check_summary.py OUTDIR DEVICE QUICK

For each bench case: clattn's median (built-in rows, and with the tuned records when
they ran), PyTorch SDPA's median on the same shape, dtype and causal setting, and the
speed ratio torch_ms / clattn_ms; for causal cases their time over the full case's;
for decode and KV-cache cases the GB/s over the copy kernel's read bandwidth measured
by `clattn devices --peak` in the same run. Then the issue's targets, each with the
figure it was judged on, or null where a figure is missing.
"""
import json
import os
import sys


def read_jsonl(path):
    rows = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def variants(out):
    """The probe answers of `clattn devices --variants`: {device: {feature: line}}."""
    res, dev = {}, None
    path = os.path.join(out, "variants.txt")
    if not os.path.exists(path):
        return res
    for line in open(path):
        s = line.strip()
        if s.startswith("[") or s.startswith("*["):
            dev = s.split("]", 1)[1].strip()
            res[dev] = {}
        elif s.startswith("variant ") and dev is not None:
            parts = s.split(None, 2)
            if len(parts) == 3:
                res[dev][parts[1]] = parts[2]
    return res


def key(r, causal=None):
    s = r["shape"]
    return (s["B"], s["Hq"], s["Hkv"], s["Lq"], s["Lk"], s["D"], s["Dv"], r["dtype"],
            r["causal"] if causal is None else causal, r.get("kv_quant", "none"))


def main():
    out, device, quick = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    steps = []
    if os.path.exists(os.path.join(out, "steps.tsv")):
        for line in open(os.path.join(out, "steps.tsv")):
            f = line.rstrip("\n").split("\t")
            if len(f) == 4:
                steps.append({"step": f[0], "status": f[1], "elapsed_s": int(f[2]), "note": f[3]})

    peak = None
    try:
        devs = json.load(open(os.path.join(out, "peak.json")))
        # the device the bench ran on: the one its rows name, else the default one
        peak = next((d for d in devs if d.get("default")), devs[0] if devs else None)
    except (OSError, ValueError):
        pass

    built = read_jsonl(os.path.join(out, "clattn.jsonl"))
    tuned = {key(r): r for r in read_jsonl(os.path.join(out, "clattn-tuned.jsonl"))}
    torch = {key(r): r for r in read_jsonl(os.path.join(out, "torch.jsonl"))}
    form_gpu = {key(r): r for r in read_jsonl(os.path.join(out, "clattn-form-gpu.jsonl"))}
    if built and peak:
        named = [d for d in devs if d.get("name") == built[0].get("device")]
        if named:
            peak = named[0]
    read_gbps = peak.get("peak_gbps") if peak else None
    full = {key(r): r for r in built if r["causal"] == "none"}

    cases = []
    for r in built:
        k = key(r)
        c = {"shape": r["shape"], "dtype": r["dtype"], "causal": r["causal"],
             "kv_quant": r.get("kv_quant", "none"), "path": r["path"],
             "clattn_ms": r["median_ms"], "gflops": r["gflops"], "gbps": r["gbps"]}
        t = tuned.get(k)
        c["clattn_tuned_ms"] = t["median_ms"] if t else None
        fg = form_gpu.get(k)
        c["fused_gpu_form_ms"] = fg["median_ms"] if fg else None  # the earlier GPU form
        best = min(x for x in (r["median_ms"], t["median_ms"] if t else None) if x is not None)
        c["clattn_best_ms"] = best
        s = torch.get(k)
        c["torch_ms"] = s["median_ms"] if s else None
        c["speed_vs_torch"] = round(s["median_ms"] / best, 3) if s and best > 0 else None
        if r["causal"] != "none":
            f = full.get(key(r, "none"))
            c["causal_over_full"] = round(r["median_ms"] / f["median_ms"], 3) if f else None
        if r["shape"]["Lq"] <= 8:
            c["read_fraction"] = round(r["gbps"] / read_gbps, 3) if read_gbps else None
        cases.append(c)

    def pick(pred):
        return [c for c in cases if pred(c)]

    def worst(vals, lower_is_better=False):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        return max(vals) if lower_is_better else min(vals)

    prefill = lambda c: c["shape"]["Lq"] > 8
    targets = [
        {"target": "fused f32 >= 0.8x PyTorch SDPA f32",
         "figure": worst(c["speed_vs_torch"] for c in pick(lambda c: prefill(c) and c["dtype"] == "f32"
                                                             and c["causal"] == "none")),
         "need": 0.8},
        {"target": "fused f16 >= 0.5x PyTorch SDPA f16 (no tensor-core variant in this build: "
                   "f16 storage, float32 arithmetic)",
         "figure": worst(c["speed_vs_torch"] for c in pick(lambda c: prefill(c) and c["dtype"] == "f16"
                                                             and c["causal"] == "none")),
         "need": 0.5},
        {"target": "causal / full <= 0.6",
         "figure": worst((c.get("causal_over_full") for c in pick(prefill)), lower_is_better=True),
         "need": 0.6, "lower_is_better": True},
        {"target": "decode and KV caches read K/V at >= 0.7x the copy kernel's bandwidth",
         "figure": worst(c.get("read_fraction") for c in pick(lambda c: not prefill(c))),
         "need": 0.7},
    ]
    for t in targets:
        f = t["figure"]
        t["met"] = None if f is None else (f <= t["need"] if t.get("lower_is_better") else f >= t["need"])

    summary = {
        "device_spec": device,
        "quick": quick,
        "device": built[0]["device"] if built else (peak or {}).get("name"),
        "driver": built[0].get("driver") if built else None,
        "copy_read_gbps": read_gbps,
        "fma_gflops": peak.get("peak_gflops") if peak else None,
        "steps": steps,
        "cases": cases,
        "targets": targets,
        "variants": variants(out),
        "not_built": ["f16-arithmetic kernel variant (only its probe exists)",
                      "matrix-unit kernel variants (mma.sync has a probe; XMX and WMMA have none)",
                      "KV-cache GPU form"],
    }
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    failed = [s["step"] for s in steps if s["status"] == "failed"]
    print("gpu_check: %d cases, steps failed: %s; %s" % (len(cases), ", ".join(failed) or "none",
                                                       os.path.join(out, "gpu_check.json")))
    for c in cases:
        print("  %-28s %-4s %-8s %-5s clattn %8.3f ms  torch %s  ratio %s" % (
            ",".join(str(c["shape"][x]) for x in ("B", "Hq", "Hkv", "Lq", "Lk", "D", "Dv")),
            c["dtype"], c["causal"], c["kv_quant"], c["clattn_best_ms"],
            "%.3f" % c["torch_ms"] if c["torch_ms"] is not None else "-",
            c["speed_vs_torch"] if c["speed_vs_torch"] is not None else c.get("read_fraction", "-")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
