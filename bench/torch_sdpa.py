#!/usr/bin/env python3
"""Time PyTorch's scaled_dot_product_attention on the shapes of a clattn sweep file, on a
CUDA GPU, and print one JSON object per case in `clattn bench --json`'s format, so the two
can be compared (and drawn together by bench/plot.py).

    python3 bench/torch_sdpa.py bench/default.sweep > torch.jsonl
"""
import json
import shlex
import statistics
import sys
import time


def cases(path):
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = shlex.split(line)
        opts = dict(zip(words[::2], words[1::2]))
        shape = [int(x) for x in opts["--shape"].split(",")]
        if len(shape) == 6:
            shape.append(shape[5])
        if opts.get("--kv-quant", "none") != "none":
            continue  # a clattn KV-cache format: SDPA has no counterpart
        yield shape, opts.get("--dtype", "f32"), opts.get("--causal", "none")


def main():
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    for (B, Hq, Hkv, Lq, Lk, D, Dv), dtype, causal in cases(sys.argv[1]):
        dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
        q = torch.randn(B, Hq, Lq, D, device=dev, dtype=dt)
        k = torch.randn(B, Hkv, Lk, D, device=dev, dtype=dt)
        v = torch.randn(B, Hkv, Lk, Dv, device=dev, dtype=dt)
        mask = None
        if causal == "bottom-right":  # SDPA's is_causal is top-left: build the mask
            i = torch.arange(Lq, device=dev)[:, None] + (Lk - Lq)
            mask = torch.arange(Lk, device=dev)[None, :] <= i
        kw = dict(attn_mask=mask, is_causal=causal == "top-left", enable_gqa=Hq != Hkv)
        for _ in range(3):
            F.scaled_dot_product_attention(q, k, v, **kw)
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, **kw)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        med = statistics.median(times)
        pairs = Lq * Lk
        if causal != "none":
            pairs = sum(max(0, min(Lk, i + 1 + (Lk - Lq if causal == "bottom-right" else 0))) for i in range(Lq))
        flops = 2.0 * (D + Dv) * pairs * B * Hq
        es = q.element_size()
        nbytes = es * (B * Hq * Lq * D + B * Hkv * Lk * (D + Dv) + B * Hq * Lq * Dv)
        print(json.dumps({
            "device": name, "driver": "torch " + torch.__version__, "path": "torch-sdpa",
            "shape": dict(B=B, Hq=Hq, Hkv=Hkv, Lq=Lq, Lk=Lk, D=D, Dv=Dv), "causal": causal,
            "dtype": dtype, "kv_quant": "none", "median_ms": med, "min_ms": min(times),
            "max_ms": max(times), "runs": len(times), "gflops": flops / (med * 1e6),
            "gbps": nbytes / (med * 1e6), "device_bytes": 0}), flush=True)


if __name__ == "__main__":
    main()
