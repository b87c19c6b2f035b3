#!/usr/bin/env python3
"""KV-cache formats, measured with the clattn executable only (standard library, no numpy):

  1. bits per element and distortion of random unit vectors, D = 128
     (clattn quantize: mean |x - x^|^2 / |x|^2; for unit vectors that is mean |x - x^|^2);
  2. attention output error against float32 attention on the same inputs
     (clattn run --kv-quant F vs clattn run), on normal data and on keys with a few
     large, offset channels (as real keys have);
  3. decode time, B=1 Hq=Hkv=32 Lq=1 Lk=8192 D=128, every format and the f16 decode path
     in one clattn bench run (a sweep file, the formats interleaved, five rounds; each
     format's time over the f16 path's in the same round, median over the rounds).

usage: bench/kv_report.py CLATTN_EXE [WORK_DIR]
"""
import math
import os
import random
import struct
import subprocess
import sys

FORMATS = ["f16", "int8", "int4", "tq4", "tq3", "tq2"]


def write_npy(path, shape, values):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % (
        ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else ""))
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        f.write(struct.pack("<%df" % len(values), *values))


def read_npy(path):
    with open(path, "rb") as f:
        data = f.read()
    hlen = struct.unpack("<H", data[8:10])[0]
    body = data[10 + hlen:]
    return struct.unpack("<%df" % (len(body) // 4), body)


def run(exe, *args):
    r = subprocess.run([exe] + list(args), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("clattn %s failed: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    exe = sys.argv[1]
    work = sys.argv[2] if len(sys.argv) > 2 else "/tmp/clattn-kv-report"
    os.makedirs(work, exist_ok=True)
    rng = random.Random(2504)

    # 1. unit vectors
    D, N = 128, 20000
    unit = []
    for _ in range(N):
        v = [rng.gauss(0, 1) for _ in range(D)]
        n = math.sqrt(sum(x * x for x in v))
        unit.extend(x / n for x in v)
    write_npy(os.path.join(work, "unit.npy"), (N, D), unit)
    print("## bits per element and distortion, %d random unit vectors, D = %d" % (N, D))
    for fmt in FORMATS:
        out = run(exe, "quantize", "--format", fmt, "--in", os.path.join(work, "unit.npy"),
                  "--out", os.path.join(work, "unit_hat.npy"))
        print("  " + out.split(": ", 2)[2].strip())

    # 2. attention output error against float32 attention
    B, H, LQ, LK = 1, 8, 4, 2048
    print("\n## attention output error against f32 attention, B=%d Hq=Hkv=%d Lq=%d Lk=%d D=%d, "
          "bottom-right causal" % (B, H, LQ, LK, D))
    for data in ("normal", "outlier-keys"):
        q = [rng.gauss(0, 1) for _ in range(B * H * LQ * D)]
        if data == "normal":
            k = [rng.gauss(0, 1) for _ in range(B * H * LK * D)]
        else:  # 4 channels 8x larger with an offset, every other channel unit normal
            big = {3: 2.0, 37: -3.0, 70: 1.5, 101: 2.5}
            k = [rng.gauss(0, 1) * (8.0 if (i % D) in big else 1.0) + big.get(i % D, 0.0)
                 for i in range(B * H * LK * D)]
        v = [rng.gauss(0, 1) for _ in range(B * H * LK * D)]
        for name, arr, l in (("q", q, LQ), ("k", k, LK), ("v", v, LK)):
            write_npy(os.path.join(work, name + ".npy"), (B, H, l, D), arr)
        base = [os.path.join(work, n + ".npy") for n in ("q", "k", "v")]
        args = ["run", "--q", base[0], "--k", base[1], "--v", base[2], "--causal", "bottom-right"]
        run(exe, *(args + ["--out", os.path.join(work, "o32.npy")]))
        ref = read_npy(os.path.join(work, "o32.npy"))
        nref = math.sqrt(sum(x * x for x in ref))
        for fmt in FORMATS:
            run(exe, *(args + ["--out", os.path.join(work, "oq.npy"), "--kv-quant", fmt]))
            got = read_npy(os.path.join(work, "oq.npy"))
            err = math.sqrt(sum((a - b) ** 2 for a, b in zip(got, ref))) / nref
            mx = max(abs(a - b) for a, b in zip(got, ref))
            print("  %-13s %-5s |O - O_f32| / |O_f32| = %.5f   max |O - O_f32| = %.5f" % (data, fmt, err, mx))

    # 3. decode time: ROUNDS rounds of the f16 decode path and every format, interleaved;
    # each format's time relative to the f16 path's in the same round, then the median over
    # the rounds (the machine is shared: a round's ratio is fairer than absolute times)
    rounds = 5
    sweep = os.path.join(work, "decode.sweep")
    cases = ["none"] + FORMATS
    with open(sweep, "w") as f:
        for _ in range(rounds):
            for fmt in cases:
                f.write("--shape 1,32,32,1,8192,128 --dtype f16 --kv-quant %s\n" % fmt)
    js = os.path.join(work, "decode.jsonl")
    print("\n## decode time: %s bench --sweep %s --runs 9 --json %s" % (exe, sweep, js))
    print(run(exe, "bench", "--sweep", sweep, "--runs", "9", "--json", js))
    import json
    with open(js) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print("format  median ms over rounds   time / f16 decode path (per round)      median ratio")
    for i, fmt in enumerate(cases):
        ms = [rows[r * len(cases) + i]["median_ms"] for r in range(rounds)]
        ratios = [rows[r * len(cases) + i]["median_ms"] / rows[r * len(cases)]["median_ms"] for r in range(rounds)]
        print("%-7s %8.2f                 %s   %.3f" % (
            "f16dec" if fmt == "none" else fmt, sorted(ms)[rounds // 2],
            " ".join("%.2f" % x for x in ratios), sorted(ratios)[rounds // 2]))


if __name__ == "__main__":
    main()
