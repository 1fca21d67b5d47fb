#!/usr/bin/env python3
"""ResNet-50 and BERT-base on the GPU: Kiln against PyTorch eager, PyTorch with CUDA graphs and torch.compile,
in one run on one GPU, FP16, random weights (nothing can be downloaded on the GPU machine).

Run on the GPU machine by scripts/gpu_round.sh (python from /opt/torch/.venv):
    bench/gpu_models.py --kiln build-gpu/kiln --out $OUT/models [--quick]
For each model and batch it exports the float32 model to ONNX once (torch.onnx.export, dynamic batch),
builds a Kiln engine with --fp16 at that batch, runs `kiln bench --no-data-transfers` with and without a CUDA
graph, and times PyTorch on the same inputs in float16 (inputs already on the GPU, as for Kiln). Median
latencies; throughput = batch / median latency. Peak activation memory: PyTorch's max_memory_allocated
during inference minus the weights, Kiln's arena plus workspace. Writes models.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch


def median_ms(fn, warmup=10, iters=50):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def torch_peers(model, inputs, do_compile, compile_mode):
    """PyTorch eager, CUDA graph and torch.compile median latencies (ms) and peak activation bytes."""
    res = {}
    with torch.inference_mode():
        # Activation memory as Kiln counts its own (arena + library scratch): PyTorch's peak minus the bytes of
        # the model's parameters and buffers and of the inputs, so that the cuBLAS/cuDNN workspaces PyTorch
        # allocates through its caching allocator count too. Also the peak above what was allocated before the
        # run (the old figure: workspaces made by an earlier run, such as the float32 reference, excluded).
        own = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        own += sum(t.numel() * t.element_size() for t in inputs)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        res["eager_ms"] = median_ms(lambda: model(*inputs))
        peak = torch.cuda.max_memory_allocated()
        res["activation_bytes_peak"] = peak - own
        res["activation_bytes_peak_above_allocated"] = peak - before
        res["allocated_before_run_beyond_weights_and_inputs"] = before - own
        # CUDA graph: capture one forward pass on static inputs and replay it.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                model(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(*inputs)
        res["cuda_graph_ms"] = median_ms(graph.replay)
        del graph
        if do_compile:
            t0 = time.time()
            try:
                compiled = torch.compile(model, mode=compile_mode)
                for _ in range(3):
                    compiled(*inputs)
                res["compile_mode"] = compile_mode
                res["compile_s"] = time.time() - t0
                res["compile_ms"] = median_ms(lambda: compiled(*inputs))
            except Exception as e:  # report, do not abort the round
                res["compile_error"] = str(e)[:300]
    return res


def kiln_bench(kiln, onnx_path, shapes, cuda_graph, out_json, extra=()):
    cmd = [kiln, "bench", onnx_path, "--fp16", "--shapes", shapes, "--no-data-transfers", "--iterations", "50",
           "--duration", "1", "--json", out_json, *extra]
    if cuda_graph:
        cmd.append("--cuda-graph")
    else:
        cmd.append("--profile")  # where the time goes, layer by layer (printed; in the JSON too)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    r = {"cmd": " ".join(cmd), "rc": p.returncode, "wall_s": round(time.time() - t0, 1),
         "stderr_tail": p.stderr[-1500:]}
    if p.returncode == 0:
        j = json.load(open(out_json))
        r["median_ms"] = j["gpu_compute_ms"]["median"] if "gpu_compute_ms" in j else j["latency_ms"]["median"]
        r["latency_median_ms"] = j["latency_ms"]["median"]
        r["activation_bytes"] = j.get("activation_bytes")
        r["arena_bytes"] = j.get("arena_bytes")
        r["workspace_bytes"] = j.get("workspace_bytes")
        prof = p.stdout[p.stdout.find("profile ("):] if "profile (" in p.stdout else ""
        if prof:
            r["profile_top"] = prof.splitlines()[:12]
    return r


def kiln_accuracy(kiln, onnx_path, feeds, reference, out_dir):
    """Runs the Kiln FP16 engine once on `feeds` (name -> numpy array) and compares its output with PyTorch's
    float32 output: the largest absolute error, relative to the largest reference magnitude."""
    import numpy as np
    args = []
    for name, value in feeds.items():
        path = os.path.join(out_dir, f"acc_{name}.npy")
        np.save(path, value)
        args += ["-i", f"{name}={path}"]
    res_dir = os.path.join(out_dir, "acc_out")
    cmd = [kiln, "run", onnx_path, "--fp16", *args, "--output-dir", res_dir]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        return {"cmd": " ".join(cmd), "rc": p.returncode, "stderr_tail": p.stderr[-800:]}
    got = np.load(os.path.join(res_dir, "out.npy")).astype(np.float64)
    ref = reference.astype(np.float64)
    err = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    return {"cmd": " ".join(cmd), "max_abs_err": err, "ref_max_abs": scale, "rel_err": err / max(scale, 1e-30)}


def save(results, row, out):
    """Adds (or updates) the row and rewrites models.json, so that a run cut short keeps what it measured."""
    if row not in results["rows"]:
        results["rows"].append(row)
    json.dump(results, open(os.path.join(out, "models.json"), "w"), indent=2)
    print(json.dumps(row)[:2000], flush=True)


def export(model, inputs, names, path, dynamic):
    if os.path.exists(path):
        return
    with torch.no_grad():
        torch.onnx.export(model, tuple(inputs), path, input_names=names, output_names=["out"],
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="batch 1 only, no torch.compile")
    ap.add_argument("--compile-mode", default="max-autotune")
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile peer (it takes minutes)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device("cuda")
    results = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": torch.cuda.get_device_name(0),
               "torch": torch.__version__, "precision": "fp16", "rows": []}

    import torchvision
    resnet = torchvision.models.resnet50(weights=None).eval().to(dev)
    r50_onnx = os.path.join(args.out, "resnet50.onnx")
    export(resnet, [torch.randn(1, 3, 224, 224, device=dev)], ["input"], r50_onnx,
           {"input": {0: "batch"}, "out": {0: "batch"}})
    x1 = torch.randn(1, 3, 224, 224, device=dev)
    with torch.no_grad():
        r50_ref = resnet(x1).float().cpu().numpy()  # float32 reference, before .half() converts the model
    r50_acc = kiln_accuracy(args.kiln, r50_onnx, {"input": x1.cpu().numpy()}, r50_ref, args.out)
    resnet_h = resnet.half()
    for batch in ([1] if args.quick else [1, 256]):
        x = torch.randn(batch, 3, 224, 224, device=dev, dtype=torch.half)
        row = {"model": "resnet50", "batch": batch}
        if batch == 1:
            row["kiln_fp16_accuracy"] = r50_acc
        for cg in (False, True):  # Kiln first: its figures survive a peer that runs out of time
            row["kiln_cuda_graph" if cg else "kiln"] = kiln_bench(
                args.kiln, r50_onnx, f"input:{batch}x3x224x224", cg,
                os.path.join(args.out, f"kiln_resnet50_b{batch}{'_cg' if cg else ''}.json"))
        save(results, row, args.out)
        row["torch"] = torch_peers(resnet_h, [x], False, args.compile_mode)  # torch.compile: BERT only (time)
        save(results, row, args.out)
    del resnet, resnet_h
    torch.cuda.empty_cache()

    from transformers import BertConfig, BertModel
    bert = BertModel(BertConfig()).eval().to(dev)  # BERT-base: 12 layers, hidden 768, 12 heads
    seq = 128
    bert_onnx = os.path.join(args.out, "bert_base.onnx")

    class BertWrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask, types):
            return self.m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    wrap = BertWrap(bert).eval()
    ids = torch.randint(0, 30000, (1, seq), device=dev)
    export(wrap, [ids, torch.ones_like(ids), torch.zeros_like(ids)], ["input_ids", "attention_mask", "token_type_ids"],
           bert_onnx, {n: {0: "batch"} for n in ["input_ids", "attention_mask", "token_type_ids"]})
    ids1 = torch.randint(0, 30000, (2, seq), device=dev)
    mask1 = torch.ones_like(ids1)
    mask1[1, seq // 2:] = 0  # one padded sequence, so the mask path is checked too
    types1 = torch.zeros_like(ids1)
    with torch.no_grad():
        bert_ref = wrap(ids1, mask1, types1).float().cpu().numpy()
    bert_acc = kiln_accuracy(args.kiln, bert_onnx, {"input_ids": ids1.cpu().numpy(), "attention_mask":
                             mask1.cpu().numpy(), "token_type_ids": types1.cpu().numpy()}, bert_ref, args.out)
    wrap_h = BertWrap(bert.half()).eval()
    for batch in ([1] if args.quick else [1, 32, 128]):
        ids = torch.randint(0, 2, (batch, seq), device=dev)
        mask = torch.ones_like(ids)
        types = torch.zeros_like(ids)
        row = {"model": "bert-base", "seq": seq, "batch": batch}
        if batch == 1:
            row["kiln_fp16_accuracy"] = bert_acc  # (measured at batch 2, one sequence padded)
        shapes = ",".join(f"{n}:{batch}x{seq}" for n in ["input_ids", "attention_mask", "token_type_ids"])
        for cg in (False, True):
            row["kiln_cuda_graph" if cg else "kiln"] = kiln_bench(
                args.kiln, bert_onnx, shapes, cg, os.path.join(args.out, f"kiln_bert_b{batch}{'_cg' if cg else ''}.json"))
        save(results, row, args.out)
        row["torch"] = torch_peers(wrap_h, [ids, mask, types], not (args.quick or args.no_compile) and batch == 32,
                                  args.compile_mode)
        save(results, row, args.out)

    for row in results["rows"]:
        k = min((row[k]["median_ms"] for k in ("kiln", "kiln_cuda_graph") if "median_ms" in row.get(k, {})), default=None)
        best_torch = min((v for kk, v in row.get("torch", {}).items() if kk.endswith("_ms")), default=None)
        row["kiln_best_ms"] = k
        row["torch_best_ms"] = best_torch
        if k and best_torch:
            row["speedup_vs_best_torch"] = best_torch / k
        if k:
            row["kiln_per_s"] = row["batch"] * 1000.0 / k
    json.dump(results, open(os.path.join(args.out, "models.json"), "w"), indent=2)
    print("wrote", os.path.join(args.out, "models.json"))


if __name__ == "__main__":
    sys.exit(main())
