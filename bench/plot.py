#!/usr/bin/env python3
"""Draw `clattn bench --json` output as a PNG: GFLOP/s and GB/s per case, one bar per
(device, path). Needs matplotlib (pip install matplotlib).

    python3 bench/plot.py bench.jsonl bench.png
"""
import json
import sys


def label(r):
    s = r["shape"]
    dv = f",{s['Dv']}" if s["Dv"] != s["D"] else ""
    causal = {"none": "", "top-left": " causal-tl", "bottom-right": " causal"}[r["causal"]]
    return f"{s['B']}x{s['Hq']}/{s['Hkv']}x{s['Lq']}x{s['Lk']}x{s['D']}{dv} {r['dtype']}{causal}"


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
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.2 * len(cases)), 9), sharex=True)
    width = 0.8 / len(series)
    for k, (dev, path) in enumerate(series):
        for ax, field in zip(axes, ("gflops", "gbps")):
            xs, ys = [], []
            for r in rows:
                if (r["device"], r["path"]) == (dev, path):
                    xs.append(cases.index(label(r)) + k * width)
                    ys.append(r[field])
            ax.bar(xs, ys, width, label=f"{path} on {dev[:40]}")
    axes[0].set_ylabel("GFLOP/s")
    axes[1].set_ylabel("GB/s (Q, K, V, O moved once)")
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    axes[1].set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    axes[0].set_title("clattn bench: driver " + rows[0]["driver"])
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
