#!/usr/bin/env python3
"""Where an engine's time goes, layer by layer, with each layer's kernel (tactic) and output shape: on the GPU
machine, exports ResNet-50 and/or BERT-base (as bench/gpu_models.py does, random weights), builds FP16 engines
at the given batch, and joins `kiln bench --profile` (one run, each layer timed) with `kiln inspect`.

    python3 bench/layer_profile.py --kiln build-gpu/kiln --out OUT_DIR --model resnet50 --batch 256
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))


def export_model(name, out):
    import torch
    from gpu_models import export
    dev = torch.device("cuda")
    path = os.path.join(out, f"{name}.onnx")
    if name == "resnet50":
        import torchvision
        m = torchvision.models.resnet50(weights=None).eval().to(dev)
        export(m, [torch.randn(1, 3, 224, 224, device=dev)], ["input"], path, {"input": {0: "batch"}, "out": {0: "batch"}})
        return path, lambda b: f"input:{b}x3x224x224"
    from transformers import BertConfig, BertModel

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask, types):
            return self.m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    m = Wrap(BertModel(BertConfig()).eval().to(dev)).eval()
    ids = torch.randint(0, 30000, (1, 128), device=dev)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    export(m, [ids, torch.ones_like(ids), torch.zeros_like(ids)], names, path, {n: {0: "batch"} for n in names})
    return path, lambda b: ",".join(f"{n}:{b}x128" for n in names)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", choices=["resnet50", "bert"], required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    onnx_path, shapes = export_model(args.model, args.out)
    engine = os.path.join(args.out, f"{args.model}_b{args.batch}.kiln")
    t0 = time.time()
    b = subprocess.run([args.kiln, "build", onnx_path, "--fp16", "--verbose", "--shapes", shapes(args.batch), "-o", engine],
                       capture_output=True, text=True, timeout=400)
    build_s = time.time() - t0
    # Where the build time went: "tactics of LAYER: BEST at MS ms; N tactics set up in S ms (slowest T, U ms)".
    setups = []
    for line in (b.stdout + b.stderr).splitlines():
        m = re.search(r"tactics of (.*): (\S+) at ([\d.]+) ms; (\d+) tactics timed in (\d+) ms, set up in (\d+) ms \(slowest (\S+), (-?\d+) ms\)", line)
        if m:
            setups.append({"layer": m.group(1), "best": m.group(2), "best_ms": float(m.group(3)), "tactics": int(m.group(4)),
                           "timing_ms": int(m.group(5)), "setup_ms": int(m.group(6)), "slowest": m.group(7),
                           "slowest_ms": int(m.group(8))})
    if b.returncode != 0:
        print(b.stderr[-2000:])
        return 1
    jpath = engine + ".json"
    subprocess.run([args.kiln, "bench", engine, "--no-data-transfers", "--profile", "--duration", "1", "--json", jpath],
                   capture_output=True, text=True, timeout=400, check=True)
    insp = subprocess.run([args.kiln, "inspect", engine], capture_output=True, text=True, timeout=100).stdout
    # "  #12 name [Op] backend=cuda kernel=TACTIC ... -> float16[...]"
    info = {}
    for line in insp.splitlines():
        m = re.match(r"\s*#\d+ (.*) \[([^\]]+)\] backend=(\S+) kernel=(\S+).*?-> (.*)$", line)
        if m:
            info[m.group(1)] = {"op": m.group(2), "tactic": m.group(4), "out": m.group(5)}
    prof = json.load(open(jpath))
    layers = prof.get("profile", [])
    total = sum(l["ms"] for l in layers)
    rows = []
    for l in layers:
        i = info.get(l["layer"], {})
        rows.append({"layer": l["layer"], "op": l["op_type"], "ms": l["ms"], "tactic": i.get("tactic"), "out": i.get("out")})
    result = {"model": args.model, "batch": args.batch, "total_ms": total, "build_s": round(build_s, 1),
              "gpu_compute_median_ms": prof.get("gpu_compute_ms", {}).get("median"), "layers": rows,
              "tactic_setup_ms_total": sum(x["setup_ms"] for x in setups), "tactic_setup": setups}
    json.dump(result, open(os.path.join(args.out, f"profile_{args.model}_b{args.batch}.json"), "w"), indent=1)
    print(f"{args.model} batch {args.batch}: {total:.3f} ms over {len(rows)} layers (median GPU time of the "
          f"unprofiled runs {result['gpu_compute_median_ms']}); built in {build_s:.1f} s, empty timing cache")
    timing_total = sum(x["timing_ms"] for x in setups)
    result["tactic_timing_ms_total"] = timing_total
    print(f"tactic timing: {timing_total / 1000:.1f} s over {len(setups)} timed layers (setup "
          f"{result['tactic_setup_ms_total'] / 1000:.1f} s); slowest:")
    for x in sorted(setups, key=lambda x: -x["timing_ms"])[:10]:
        print(f"  {x['timing_ms']:6d} ms (setup {x['setup_ms']} ms) {x['tactics']} tactics, slowest to set up "
              f"{x['slowest']} {x['slowest_ms']} ms  {x['layer'][:60]}")
    for r in sorted(rows, key=lambda r: -r["ms"])[:args.top]:
        print(f"{r['ms']:8.4f} ms {100 * r['ms'] / total:5.1f}%  {r['op']:<18} {str(r['tactic']):<26} {r['out']}  {r['layer'][:60]}")
    os.remove(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
