#!/usr/bin/env python3
"""A tactic's worth inside a whole model, measured in one session: on the GPU machine, exports ResNet-50 or
BERT-base (as bench/layer_profile.py does, random weights), builds an FP16 engine with the builder's own choices
(A) and one with every layer of an op type forced to another tactic (B: the build's timing cache rewritten to
name it, as bench/attention_bench.py does for one layer), then times the two engines alternately
(`kiln bench --cuda-graph --no-data-transfers`, A B A B ...) and reports each one's median of the rounds'
medians and the ratio B / A. Machines of the device tool differ by several percent from one start to the next;
alternating runs on one machine is what makes two engines comparable.

    python3 bench/tactic_ab.py --kiln build/kiln --out OUT_DIR --model bert --batch 128 \\
        --op kiln.FusedAttention --tactic cuda.flash.wgmma.pipe.staggered
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from layer_profile import export_model  # noqa: E402


def build(kiln, onnx_path, shapes, cache, engine):
    p = subprocess.run([kiln, "build", onnx_path, "--fp16", "--shapes", shapes, "--timing-cache", cache, "-o", engine],
                       capture_output=True, text=True, timeout=400)
    if p.returncode != 0:
        raise SystemExit(f"kiln build failed: {p.stderr[-1500:]}")


def kernels(kiln, engine, op):
    """The tactics (kernel=...) of the engine's layers of op type `op`, from `kiln inspect`."""
    out = subprocess.run([kiln, "inspect", engine], capture_output=True, text=True, timeout=100).stdout
    return sorted({m.group(1) for m in re.finditer(r"\[" + re.escape(op) + r"\] backend=\S+ kernel=(\S+)", out)})


def bench_ms(kiln, engine, jpath):
    p = subprocess.run([kiln, "bench", engine, "--cuda-graph", "--no-data-transfers", "--iterations", "100",
                        "--duration", "1", "--json", jpath], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise SystemExit(f"kiln bench failed: {p.stderr[-1500:]}")
    return json.load(open(jpath))["gpu_compute_ms"]["median"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", choices=["resnet50", "bert"], required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--op", required=True, help="the op type as the timing cache names it, e.g. kiln.FusedAttention")
    ap.add_argument("--tactic", required=True, help="the tactic engine B runs those layers with")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    onnx_path, shapes = export_model(args.model, args.out)
    cache_a = os.path.join(args.out, "a.cache.json")
    engine_a, engine_b = os.path.join(args.out, "a.kiln"), os.path.join(args.out, "b.kiln")
    build(args.kiln, onnx_path, shapes(args.batch), cache_a, engine_a)
    entries = json.load(open(cache_a))
    keys = [k for k in entries["entries"] if args.op in k]
    if not keys:
        raise SystemExit(f"no {args.op} entry in the timing cache")
    for k in keys:
        entries["entries"][k] = {"tactic": args.tactic, "ms": 0.0}
    cache_b = os.path.join(args.out, "b.cache.json")
    json.dump(entries, open(cache_b, "w"))
    build(args.kiln, onnx_path, shapes(args.batch), cache_b, engine_b)
    ka, kb = kernels(args.kiln, engine_a, args.op), kernels(args.kiln, engine_b, args.op)
    if kb != [args.tactic]:
        raise SystemExit(f"engine B runs {kb}, not {args.tactic}")
    a_ms, b_ms = [], []
    for _ in range(args.rounds):
        a_ms.append(bench_ms(args.kiln, engine_a, os.path.join(args.out, "a.json")))
        b_ms.append(bench_ms(args.kiln, engine_b, os.path.join(args.out, "b.json")))
    a, b = statistics.median(a_ms), statistics.median(b_ms)
    result = {"model": args.model, "batch": args.batch, "op": args.op, "a_tactics": ka, "b_tactic": args.tactic,
              "a_ms": a, "b_ms": b, "b_over_a": b / a, "a_runs_ms": a_ms, "b_runs_ms": b_ms,
              "a_per_s": 1000 * args.batch / a, "b_per_s": 1000 * args.batch / b}
    json.dump(result, open(os.path.join(args.out, f"tactic_ab_{args.model}_b{args.batch}.json"), "w"), indent=1)
    print(f"{args.model} b{args.batch}: A ({', '.join(ka)}) {a:.3f} ms = {result['a_per_s']:.0f}/s; "
          f"B ({args.op} -> {args.tactic}) {b:.3f} ms = {result['b_per_s']:.0f}/s; B/A {b / a:.3f}")
    for f in (engine_a, engine_b):
        os.remove(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
