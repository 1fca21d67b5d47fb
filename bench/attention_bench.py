#!/usr/bin/env python3
"""Kernel benchmark of Kiln's fused attention (kiln.FusedAttention, src/backends/cuda/attention.cu) on the GPU
machine, against PyTorch's scaled_dot_product_attention (its FlashAttention backend) in the same run.

For each (batch, heads, sequence, head dim) it writes a one-attention ONNX model in float16 (Q, K, V inputs
[B, H, S, D]; MatMul(Q, K^T) -> Mul(scale) -> Softmax -> MatMul(., V), the pattern the optimizer's
fuse_attention turns into one node), runs `kiln bench --fp16 --no-data-transfers` on it, and reports the
median GPU time and TFLOP/s = 4 * B * H * S^2 * D / time (the two matrix products; the softmax not counted,
as FlashAttention's papers count). The engine's layer list is checked to hold one FusedAttention layer.

Besides the builder's own pick (kiln_ms), each tensor-core tactic is timed alone (tactics.<name>): the build's
timing cache is rewritten to name that tactic for the attention layer, and the engine rebuilt from it (a
tactic that refuses the problem, e.g. cuda.flash.wgmma off Hopper, fails its build and says why).

    python3 bench/attention_bench.py --kiln build-gpu/kiln --out OUT_DIR
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

CONFIGS = [  # (batch, heads, seq, head_dim, mask): mask None, "keys" ([B, 1, 1, S]) or "full" ([B, 1, S, S])
    (8, 16, 2048, 128, None),  # the target: sequence 2048, head dim 128 (FlashAttention's setting)
    (2, 16, 8192, 128, None),
    (16, 16, 1024, 64, None),
    (128, 12, 128, 64, None),  # BERT-base at batch 128 (sequence 128), without and with its padding mask
    (128, 12, 128, 64, "keys"),
    (128, 12, 128, 64, "full"),  # the mask as transformers' export expands it
    (1, 12, 128, 64, None),    # BERT-base at batch 1
    (1, 12, 128, 64, "keys"),
]


def attention_model(path, b, h, s, d, mask=None):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    shape = [b, h, s, d]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, shape) for n in ("q", "k", "v")]
    if mask:  # an additive mask, added to the scaled logits before the softmax
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT16, [b, 1, 1 if mask == "keys" else s, s]))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT16, shape)
    scale = numpy_helper.from_array(np.array(1.0 / d ** 0.5, dtype=np.float16), "scale")
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
        helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale"),
        helper.make_node("Softmax", ["ssm" if mask else "ss"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"], name="pv"),
    ]
    if mask:
        nodes.insert(3, helper.make_node("Add", ["ss", "mask"], ["ssm"], name="add_mask"))
    g = helper.make_graph(nodes, "attention", inputs, [out], [scale])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def torch_sdpa_ms(b, h, s, d, mask=None):
    try:
        import torch
        import torch.nn.functional as F
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.half) for _ in range(3))
        m = None if not mask else torch.randn(b, 1, 1 if mask == "keys" else s, s, device="cuda", dtype=torch.half)
        ms = []
        for _ in range(5):
            F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        for _ in range(20):
            a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            F.scaled_dot_product_attention(q, k, v, attn_mask=m)
            e.record()
            torch.cuda.synchronize()
            ms.append(a.elapsed_time(e))
        ms.sort()
        return ms[len(ms) // 2]
    except Exception as ex:  # noqa: BLE001 - the peer is optional; say why it is missing
        return str(ex)[:200]


TACTICS = ["cuda.flash.wgmma.pipe", "cuda.flash.wgmma.pipe.staggered", "cuda.flash.wgmma",
           "cuda.flash.wgmma.lockstep", "cuda.flash.wgmma.short", "cuda.flash.br128", "cuda.flash.br64", "cuda.flash.br32", "cuda.flash.br16"]


def bench_engine(kiln, engine, jpath):
    """Median GPU ms of an engine, or (None, stderr)."""
    cmd = [kiln, "bench", engine, "--fp16", "--no-data-transfers", "--iterations", "50", "--duration", "1",
           "--json", jpath]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        return None, p.stderr[-800:]
    return json.load(open(jpath))["gpu_compute_ms"]["median"], ""


def forced_tactic_ms(kiln, path, cache, tactic):
    """Builds `path` with the attention layer's cached tactic replaced by `tactic`, then times it."""
    entries = json.load(open(cache))
    keys = [k for k in entries["entries"] if "kiln.FusedAttention" in k]
    if not keys:
        return {"error": "no kiln.FusedAttention entry in the timing cache"}
    for k in keys:
        entries["entries"][k] = {"tactic": tactic, "ms": 0.0}
    forced = cache.replace(".cache.json", "." + tactic + ".cache.json")
    json.dump(entries, open(forced, "w"))
    engine = path.replace(".onnx", "." + tactic + ".kiln")
    build = subprocess.run([kiln, "build", path, "--fp16", "--timing-cache", forced, "-o", engine],
                           capture_output=True, text=True, timeout=300)
    out = {}
    if build.returncode != 0:
        out["error"] = build.stderr[-800:]
    else:
        insp = subprocess.run([kiln, "inspect", engine], capture_output=True, text=True, timeout=300)
        if not re.search("kernel=" + re.escape(tactic) + r"(\s|$)", insp.stdout, re.M):
            out["error"] = "the engine does not run " + tactic
        else:
            ms, err = bench_engine(kiln, engine, engine.replace(".kiln", ".json"))
            out.update({"ms": ms} if ms is not None else {"error": err})
    for f in (forced, engine):
        if os.path.exists(f):
            os.remove(f)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-seq", type=int, default=1 << 30, help="only the configurations up to this sequence length")
    ap.add_argument("--tactics", default="", help="comma-separated: time only these tactics alone (default: all)")
    args = ap.parse_args()
    tactics = [t for t in args.tactics.split(",") if t] or TACTICS
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for b, h, s, d, mask in CONFIGS:
        if s > args.max_seq:
            continue
        path = os.path.join(args.out, f"attention_b{b}_h{h}_s{s}_d{d}{'_mask_' + mask if mask else ''}.onnx")
        attention_model(path, b, h, s, d, mask)
        flops = 4.0 * b * h * s * s * d
        jpath = path.replace(".onnx", ".json")
        engine = path.replace(".onnx", ".kiln")
        cache = path.replace(".onnx", ".cache.json")
        build = subprocess.run([args.kiln, "build", path, "--fp16", "--timing-cache", cache, "-o", engine],
                               capture_output=True, text=True, timeout=300)
        cmd = [args.kiln, "bench", engine if build.returncode == 0 else path, "--fp16", "--no-data-transfers", "--iterations", "50", "--duration", "1",
               "--json", jpath]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        row = {"batch": b, "heads": h, "seq": s, "head_dim": d, "mask": mask, "cmd": " ".join(cmd), "rc": p.returncode}
        if p.returncode == 0:
            j = json.load(open(jpath))
            ms = j["gpu_compute_ms"]["median"]
            row.update(kiln_ms=ms, kiln_tflops=flops / ms / 1e9)
        else:
            row["stderr"] = p.stderr[-800:]
        insp = subprocess.run([args.kiln, "inspect", engine], capture_output=True, text=True, timeout=300)
        row["layers"] = [l.strip() for l in insp.stdout.splitlines() if l.strip().startswith("#")]
        if build.returncode == 0 and os.path.exists(cache):
            row["tactics"] = {}
            for t in tactics:
                r = forced_tactic_ms(args.kiln, path, cache, t)
                if "ms" in r:
                    r["tflops"] = flops / r["ms"] / 1e9
                row["tactics"][t] = r
        t = torch_sdpa_ms(b, h, s, d, mask)
        if isinstance(t, float):
            row.update(torch_sdpa_ms=t, torch_sdpa_tflops=flops / t / 1e9)
        else:
            row["torch_error"] = t
        rows.append(row)
        print(json.dumps(row), flush=True)
        for f in (path, engine, cache):
            if os.path.exists(f):
                os.remove(f)
    res = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    json.dump(res, open(os.path.join(args.out, "attention_bench.json"), "w"), indent=2)


if __name__ == "__main__":
    sys.exit(main())
