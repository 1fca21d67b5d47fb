#!/usr/bin/env python3
"""Two probes, on the GPU machine, behind decisions of issue 4 (not a benchmark of Kiln's speed):

1. Would running the early layers of ResNet-50 in batch slices that fit the H100's 50 MB L2 pay? Exports
   ResNet-50's stem + layer1, stem + layer1 + layer2, and the whole model (torchvision, random weights), and
   times Kiln's FP16 engine of each at batches 8, 16, 32, 64 and 256 (`kiln bench --cuda-graph
   --no-data-transfers`): the time per image at a small batch is what a slice would cost.
2. PyTorch's (cuBLAS's) FP16 GEMMs at BERT-base's batch-128 shapes and its LayerNorm, as a peer for Kiln's.

    python3 bench/batch_slice_probe.py KILN OUT_DIR      (writes OUT_DIR/batch_slice_probe.json)
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BATCHES = (8, 16, 32, 64, 256)
BERT_TOKENS = 16384  # batch 128 x sequence 128
BERT_GEMMS = ((2304, 768), (768, 768), (3072, 768), (768, 3072))  # (N, K): QKV, output, FFN in, FFN out


def resnet_parts(torch, torchvision, dev):
    """ResNet-50 (random weights) and its two prefixes whose activations dominate at batch 256."""
    m = torchvision.models.resnet50(weights=None).eval().to(dev)
    head = [m.conv1, m.bn1, m.relu, m.maxpool, m.layer1]
    return {"stem_l1": torch.nn.Sequential(*head).eval(), "stem_l2": torch.nn.Sequential(*head, m.layer2).eval(), "full": m}


def kiln_ms(kiln, onnx_path, batch, json_path):
    """Median GPU ms of Kiln's FP16 engine at `batch` (CUDA graph), or None (the error printed)."""
    cmd = [kiln, "bench", onnx_path, "--fp16", "--shapes", f"input:{batch}x3x224x224", "--no-data-transfers",
           "--iterations", "50", "--duration", "1", "--json", json_path, "--cuda-graph"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        print(onnx_path, batch, "rc", p.returncode, p.stderr[-400:])
        return None
    return json.load(open(json_path))["gpu_compute_ms"]["median"]


def median_ms(torch, fn, runs=50):
    """Median of `runs` CUDA-event timings of fn() after 5 warm-up calls."""
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(runs):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kiln")
    ap.add_argument("out")
    ap.add_argument("--work", default="/tmp", help="folder for the exported models and bench JSON")
    args = ap.parse_args()
    import torch
    import torchvision
    from gpu_models import export
    dev = torch.device("cuda")
    res = {}
    for name, mod in resnet_parts(torch, torchvision, dev).items():
        path = os.path.join(args.work, f"{name}.onnx")
        export(mod, [torch.randn(1, 3, 224, 224, device=dev)], ["input"], path, {"input": {0: "batch"}, "out": {0: "batch"}})
        for b in BATCHES:
            ms = kiln_ms(args.kiln, path, b, os.path.join(args.work, f"{name}_{b}.json"))
            if ms is None:
                continue
            res[f"{name}_b{b}"] = {"ms": ms, "us_per_img": 1000 * ms / b}
            print(f"{name} b{b}: {ms:.3f} ms, {1000 * ms / b:.2f} us/img", flush=True)
    m = BERT_TOKENS
    for n, k in BERT_GEMMS:
        a = torch.randn(m, k, device=dev, dtype=torch.half)
        w = torch.randn(k, n, device=dev, dtype=torch.half)
        ms = median_ms(torch, lambda: a @ w)
        res[f"torch_gemm_{n}x{k}"] = {"ms": ms, "tflops": 2 * m * n * k / ms / 1e9}
        print(f"torch gemm M={m} N={n} K={k}: {ms * 1000:.1f} us {2 * m * n * k / ms / 1e9:.0f} TFLOP/s", flush=True)
    x = torch.randn(m, 768, device=dev, dtype=torch.half)
    ln = torch.nn.LayerNorm(768).to(dev).half()
    ms = median_ms(torch, lambda: ln(x))
    res["torch_layernorm_16384x768"] = {"ms": ms}
    print(f"torch LN: {ms * 1000:.1f} us")
    json.dump(res, open(os.path.join(args.out, "batch_slice_probe.json"), "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
