#!/usr/bin/env python3
"""Two probes, on the GPU machine, behind decisions of issue 4 (not a benchmark of Kiln's speed):

1. Would running the early layers of ResNet-50 in batch slices that fit the H100's 50 MB L2 pay? Exports
   ResNet-50's stem + layer1, stem + layer1 + layer2, and the whole model (torchvision, random weights), and
   times Kiln's FP16 engine of each at batches 8, 16, 32, 64 and 256 (`kiln bench --cuda-graph
   --no-data-transfers`): the time per image at a small batch is what a slice would cost.
2. PyTorch's (cuBLAS's) FP16 GEMMs at BERT-base's batch-128 shapes and its LayerNorm, as a peer for Kiln's.

    python3 bench/batch_slice_probe.py KILN OUT_DIR      (writes OUT_DIR/batch_slice_probe.json)
"""
import json, os, subprocess, sys, time
import torch, torchvision
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_models import export
K = sys.argv[1]; OUT = sys.argv[2]
dev = torch.device("cuda")
m = torchvision.models.resnet50(weights=None).eval().to(dev)
parts = {
  "stem_l1": torch.nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1),
  "stem_l2": torch.nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2),
  "full": m,
}
res = {}
for name, mod in parts.items():
    path = f"/tmp/{name}.onnx"
    export(mod.eval(), [torch.randn(1, 3, 224, 224, device=dev)], ["input"], path, {"input": {0: "batch"}, "out": {0: "batch"}})
    for b in (8, 16, 32, 64, 256):
        j = f"/tmp/{name}_{b}.json"
        cmd = [K, "bench", path, "--fp16", "--shapes", f"input:{b}x3x224x224", "--no-data-transfers", "--iterations", "50",
               "--duration", "1", "--json", j, "--cuda-graph"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            print(name, b, "rc", p.returncode, p.stderr[-400:]); continue
        ms = json.load(open(j))["gpu_compute_ms"]["median"]
        res[f"{name}_b{b}"] = {"ms": ms, "us_per_img": 1000 * ms / b}
        print(f"{name} b{b}: {ms:.3f} ms, {1000*ms/b:.2f} us/img", flush=True)

def t(fn, n=50):
    for _ in range(5): fn()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(n):
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); return ts[len(ts)//2]
M = 16384
for n_, k_ in ((2304, 768), (768, 768), (3072, 768), (768, 3072)):
    a = torch.randn(M, k_, device=dev, dtype=torch.half); w = torch.randn(k_, n_, device=dev, dtype=torch.half)
    ms = t(lambda: a @ w)
    res[f"torch_gemm_{n_}x{k_}"] = {"ms": ms, "tflops": 2 * M * n_ * k_ / ms / 1e9}
    print(f"torch gemm M={M} N={n_} K={k_}: {ms*1000:.1f} us {2*M*n_*k_/ms/1e9:.0f} TFLOP/s", flush=True)
x = torch.randn(M, 768, device=dev, dtype=torch.half); ln = torch.nn.LayerNorm(768).to(dev).half()
ms = t(lambda: ln(x)); res["torch_layernorm_16384x768"] = {"ms": ms}; print(f"torch LN: {ms*1000:.1f} us")
json.dump(res, open(os.path.join(OUT, "batch_slice_probe.json"), "w"), indent=1)
