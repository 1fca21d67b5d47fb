#!/usr/bin/env python3
"""No cliffs (issue 5): one engine built with an optimization profile over the sequence length, timed at every
length from 16 to the profile's max in steps of 16, without a rebuild. Latency should rise smoothly with the
length; the script flags each step where it jumps (or drops) by more than the noise allows.

Models: BERT-base and GPT-2 exported here with dynamic batch and sequence (needs torch and transformers:
the GPU machine), or any ONNX model given with --onnx, whose inputs named in --seq-inputs take
[batch, seq] (or [batch, seq, ...rest] with --rest) shapes:

    python3 bench/seq_sweep.py --kiln build/kiln --out OUT [--models bert,gpt2] [--devices cpu,cuda]
    python3 bench/seq_sweep.py --kiln build/kiln --out OUT --onnx model.onnx --seq-inputs x --rest 64

Each (model, device) builds one engine (`kiln build --min-shapes/--opt-shapes/--max-shapes`: min at length
1, opt at 128, max at --max-seq) and runs `kiln bench --shapes` at each length: the median latency of its
timed runs. A step is a cliff when the latency grows by more than --cliff times the largest growth the
lengths before it showed (after the first few) or falls by more than the noise (--drop). Writes
seq_sweep.json: per model and device, the lengths, the medians and the steps flagged. A build that fails
(e.g. a device without profile support yet) is recorded with its message.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def export_transformer(name, out):
    """BERT-base or GPT-2 with random weights, dynamic batch and sequence; returns (path, input names)."""
    import torch
    from gpu_models import export
    if name == "bert":
        from transformers import BertConfig, BertModel
        m = BertModel(BertConfig()).eval()
        names = ["input_ids", "attention_mask", "token_type_ids"]
    else:
        from transformers import GPT2Config, GPT2Model
        m = GPT2Model(GPT2Config()).eval()
        names = ["input_ids", "attention_mask"]

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            kw = dict(zip(names, args))
            if hasattr(self.m.config, "use_cache"):
                kw["use_cache"] = False
            return self.m(**kw).last_hidden_state

    ids = torch.randint(0, 1000, (1, 128))
    feeds = [ids, torch.ones_like(ids)] + ([torch.zeros_like(ids)] if name == "bert" else [])
    path = os.path.join(out, f"{name}_dynamic.onnx")
    export(LastHidden(m).eval(), feeds, names, path, {n: {0: "batch", 1: "seq"} for n in names})
    return path, names


def shapes(names, batch, seq, rest):
    dims = "x".join(str(d) for d in [batch, seq] + rest)
    return ",".join(f"{n}:{dims}" for n in names)


def median_ms(kiln, engine, names, batch, seq, rest, jpath, device, iterations, duration):
    cmd = [kiln, "bench", engine, "--shapes", shapes(names, batch, seq, rest), "--iterations", str(iterations),
           "--duration", str(duration), "--json", jpath]
    if device == "cuda":
        cmd += ["--no-data-transfers", "--cuda-graph"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return None, p.stderr[-600:]
    j = json.load(open(jpath))
    return (j.get("gpu_compute_ms") or j["latency_ms"])["median"], ""


def flag_steps(rows, cliff, drop, settle=3):
    """Steps whose growth is over `cliff` times the largest growth seen before (after `settle` steps), or
    whose latency falls by more than `drop` (a fraction)."""
    flagged, worst = [], None
    for i in range(1, len(rows)):
        a, b = rows[i - 1]["median_ms"], rows[i]["median_ms"]
        if a is None or b is None:
            continue
        growth = b / a
        if growth < 1.0 - drop:
            flagged.append({"from": rows[i - 1]["seq"], "to": rows[i]["seq"], "ratio": growth, "why": "drop"})
        if worst is not None and i > settle and growth > 1.0 + cliff * max(worst - 1.0, 0.02):
            flagged.append({"from": rows[i - 1]["seq"], "to": rows[i]["seq"], "ratio": growth, "why": "jump"})
        worst = growth if worst is None else max(worst, growth)
    return flagged


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="bert,gpt2", help="bert,gpt2 (exported here; needs torch)")
    ap.add_argument("--onnx", help="an ONNX model instead of --models")
    ap.add_argument("--seq-inputs", help="with --onnx: comma-separated inputs of shape [batch, seq, *rest]")
    ap.add_argument("--rest", default="", help="with --onnx: the inputs' dims after the sequence, e.g. 64 or 3x64")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--max-seq", type=int, default=512)
    ap.add_argument("--step", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--duration", type=float, default=0.3)
    ap.add_argument("--jobs", type=int, default=1, help="CPU lengths timed at once (each kiln CPU run is one thread)")
    ap.add_argument("--cliff", type=float, default=3.0, help="a jump: growth over this times the largest before")
    ap.add_argument("--drop", type=float, default=0.15, help="a drop: latency falling by more than this fraction")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rest = [int(d) for d in args.rest.split("x")] if args.rest else []
    if args.onnx:
        if not args.seq_inputs:
            ap.error("--onnx needs --seq-inputs")
        models = [(os.path.splitext(os.path.basename(args.onnx))[0], args.onnx, args.seq_inputs.split(","))]
    else:
        models = []
        for name in args.models.split(","):
            path, names = export_transformer(name, args.out)
            models.append((name, path, names))
    results = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "batch": args.batch,
               "lengths": list(range(args.step, args.max_seq + 1, args.step)), "runs": []}
    for name, path, names in models:
        for device in args.devices.split(","):
            run = {"model": name, "device": device}
            engine = os.path.join(args.out, f"{name}_{device}.kiln")
            build = [args.kiln, "build", path, "--device", device, "-o", engine,
                     "--min-shapes", shapes(names, args.batch, 1, rest),  # every length from 1 runs
                     "--opt-shapes", shapes(names, args.batch, 128, rest),
                     "--max-shapes", shapes(names, args.batch, args.max_seq, rest)]
            if device == "cuda":
                build.append("--fp16")
            t0 = time.time()
            b = subprocess.run(build, capture_output=True, text=True, timeout=900)
            run.update(build_cmd=" ".join(build), build_s=round(time.time() - t0, 1))
            if b.returncode != 0:
                run["build_error"] = (b.stderr or b.stdout)[-600:].strip()
                print(f"{name} {device}: build failed: {run['build_error'][-200:]}", flush=True)
                results["runs"].append(run)
                continue
            def one(seq):
                ms, err = median_ms(args.kiln, engine, names, args.batch, seq, rest,
                                    os.path.join(args.out, f"bench_{seq}.json"), device, args.iterations, args.duration)
                print(f"{name} {device} seq {seq}: {ms}", flush=True)
                return {"seq": seq, "median_ms": ms} if ms is not None else {"seq": seq, "median_ms": None, "error": err}
            # The GPU runs one length at a time; the CPU engine is single-threaded, so --jobs lengths may run at
            # once on as many cores (each length still runs alone on its core).
            jobs = args.jobs if device == "cpu" else 1
            with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
                rows = list(pool.map(one, results["lengths"]))
            run["jobs"] = jobs
            run["rows"] = rows
            run["flagged"] = flag_steps(rows, args.cliff, args.drop)
            run["smooth"] = not run["flagged"] and all(r["median_ms"] is not None for r in rows)
            results["runs"].append(run)
            json.dump(results, open(os.path.join(args.out, "seq_sweep.json"), "w"), indent=1)
            os.remove(engine)
    json.dump(results, open(os.path.join(args.out, "seq_sweep.json"), "w"), indent=1)
    for r in results["runs"]:
        print(r["model"], r["device"], "smooth" if r.get("smooth") else r.get("flagged") or r.get("build_error"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
