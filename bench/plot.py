#!/usr/bin/env python3
"""Draw `clattn bench --json` output as one PNG, the same comparison as the table that
ends `clattn bench --device all`: per case, one bar per (device, path) for GFLOP/s,
GB/s, the fraction of that device's measured peak (when the lines carry peak_gflops and
peak_gbps, as --device all writes them), and the time over the fastest device's.
Needs matplotlib (pip install matplotlib).

    python3 bench/plot.py bench.jsonl bench.png
"""
import json
import sys


def label(r):
    s = r["shape"]
    dv = f",{s['Dv']}" if s["Dv"] != s["D"] else ""
    causal = {"none": "", "top-left": " causal-tl", "bottom-right": " causal"}[r["causal"]]
    kv = f" kv:{r['kv_quant']}" if r.get("kv_quant", "none") != "none" else ""
    return f"{s['B']}x{s['Hq']}/{s['Hkv']}x{s['Lq']}x{s['Lk']}x{s['D']}{dv} {r['dtype']}{causal}{kv}"


def panels(rows):
    """(y label, value of a row or None) for each panel to draw."""
    fastest = {}
    for r in rows:
        key = (label(r), r.get("requested_path", r["path"]))
        fastest[key] = min(fastest.get(key, r["median_ms"]), r["median_ms"])
    out = [("GFLOP/s", lambda r: r["gflops"]), ("GB/s (Q, K, V, O moved once)", lambda r: r["gbps"])]
    if any("peak_gflops" in r for r in rows):
        out.append(("% of the device's peak FLOP/s",
                    lambda r: 100.0 * r["gflops"] / r["peak_gflops"] if r.get("peak_gflops") else None))
        out.append(("% of the device's peak bandwidth",
                    lambda r: 100.0 * r["gbps"] / r["peak_gbps"] if r.get("peak_gbps") else None))
    out.append(("time / fastest device's",
                lambda r: r["median_ms"] / fastest[(label(r), r.get("requested_path", r["path"]))]))
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py BENCH.jsonl OUT.png")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    if not rows:
        sys.exit("plot.py: no measurements in " + sys.argv[1])
    cases = list(dict.fromkeys(label(r) for r in rows))
    series = list(dict.fromkeys((r["device"], r["path"]) for r in rows))
    what = panels(rows)
    fig, axes = plt.subplots(len(what), 1, figsize=(max(8, 1.2 * len(cases)), 3.2 * len(what)), sharex=True)
    width = 0.8 / len(series)
    for k, (dev, path) in enumerate(series):
        for ax, (_, value) in zip(axes, what):
            xs, ys = [], []
            for r in rows:
                v = value(r)
                if (r["device"], r["path"]) == (dev, path) and v is not None:
                    xs.append(cases.index(label(r)) + k * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=f"{path} on {dev[:40]}")
    for ax, (name, _) in zip(axes, what):
        ax.set_ylabel(name, fontsize=8)
    axes[-1].set_yscale("log")  # devices can differ by orders of magnitude
    axes[-1].set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    axes[-1].set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    drivers = ", ".join(dict.fromkeys(f"{r['device'][:24]} ({r['driver']})" for r in rows))
    axes[0].set_title("clattn bench: " + drivers, fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
