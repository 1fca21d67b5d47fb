#!/usr/bin/env python3
"""Real exported models through every optimization level and precision, against the unoptimized CPU reference
(issue 4: every pass keeps results within tolerance of `kiln run --device cpu --opt-level 0`).

Two phases:
1. Export (needs torch; skipped with --models): ResNet-50, MobileNetV2 and ViT-B/16 (torchvision), BERT-base
   (seq 128, the second sequence padded through attention_mask) and GPT-2 (seq 128, causal, the second sequence padded too) from transformers,
   random weights (nothing can be downloaded on the GPU machine), seed 0, batch 2, with gpu_models.py's export()
   (torch.onnx.export, opset 17, dynamo=False, dynamic batch). Each model is WORK/models/NAME.onnx plus
   NAME.npz: the inputs under the ONNX input names and PyTorch's float32 outputs (computed on the CPU, so no TF32)
   under the ONNX output names, the second reference.
2. Check (needs only numpy and onnx): for every NAME.onnx + NAME.npz in the models folder and each variant of
   VARIANTS, `kiln build` with the variant's flags (and --shapes from the npz inputs), `kiln run` of that engine
   on the inputs (written as .npy), and `kiln inspect` of it for the layers, their backends and precisions and
   the reasons of CPU fallbacks (--direct: `kiln run` and `kiln inspect` of the ONNX model with the flags). Each variant's error is max |kiln - reference| / max |reference| (per output,
   the worst output counts), against the tolerance of its precision (TOLERANCES); also the same against
   PyTorch. An FP16 row whose model loses more than that to half precision itself (PyTorch's own FP16 run,
   where the GPU made one) is held to twice PyTorch's FP16 error instead. The reference row itself is checked
   against PyTorch at the float32 tolerance. Where the reference
   run failed, PyTorch's output stands in for it (the row says so).

CPU variants are single-threaded Kiln processes, run --jobs at a time; CUDA variants run one at a time beside
them (one GPU). One failing or timed-out variant never stops the others. model_check.json in --out is
rewritten after every variant, so a run cut short keeps its rows. One line is printed per model x variant.
Exit status 0 when every row passes, 1 otherwise.

On the GPU machine (python from /opt/torch/.venv, kiln built there; about 5-8 minutes for the five models):
    bench/model_check.py --kiln build-gpu/kiln --out $OUT --budget 500
Anywhere, from ONNX files (e.g. made with the onnx helper API), CPU variants only:
    bench/model_check.py --kiln build-cuda/kiln --models DIR --out /tmp/mc --cpu-only
"""
import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np

# Allowed max |kiln - reference| / max |reference|, by the precision a variant lets the builder use.
TOLERANCES = {
    # Only summation order differs (fused kernels, blocked or split-K GEMMs, other conv algorithms): about 1e-6
    # per op, growing with depth to about 1e-5 through 12 transformer layers; 1e-4 keeps a margin and still
    # catches any wrong kernel or rewrite, whose errors are of the order of the values themselves.
    "fp32": 1e-4,
    # GEMM and conv inputs rounded to a 10-bit mantissa (unit roundoff 2^-11, about 5e-4), float32 accumulation;
    # errors add up over dozens of layers.
    "tf32": 5e-3,
    # Activations stored in float16 as well (same 10-bit mantissa), softmax and normalizations kept in float32.
    "fp16": 1e-2,
    # A 7-bit mantissa (unit roundoff 2^-8, about 4e-3) on every stored activation.
    "bf16": 5e-2,
}

# name, device, opt level, precision (the tolerance), extra kiln flags. The first is the reference.
VARIANTS = [
    ("cpu_o0", "cpu", 0, "fp32", []),
    ("cpu_o1", "cpu", 1, "fp32", []),
    ("cpu_o2", "cpu", 2, "fp32", []),
    ("cpu_o3", "cpu", 3, "fp32", []),
    ("cuda_o0", "cuda", 0, "fp32", ["--no-tf32"]),
    ("cuda_o1", "cuda", 1, "fp32", ["--no-tf32"]),
    ("cuda_o2", "cuda", 2, "fp32", ["--no-tf32"]),
    ("cuda_o3", "cuda", 3, "fp32", ["--no-tf32"]),
    ("cuda_o3_tf32", "cuda", 3, "tf32", []),
    ("cuda_o1_fp16", "cuda", 1, "fp16", ["--fp16"]),  # against o3: whether a fusion or half precision errs
    ("cuda_o3_fp16", "cuda", 3, "fp16", ["--fp16"]),
    ("cuda_o3_bf16", "cuda", 3, "bf16", ["--bf16"]),
]
REFERENCE = VARIANTS[0][0]
MODELS = ["resnet50", "mobilenet_v2", "bert_base", "gpt2", "vit_b_16"]

print_lock = threading.Lock()


def say(*parts):
    with print_lock:
        print(*parts, flush=True)


# ---- phase 1: export (torch only here) ----

def torch_models(batch, seq):
    """name -> function returning (module, {input name: tensor}). Built one at a time (memory)."""
    import torch

    def vision(ctor):
        def make():
            return realistic(ctor(weights=None)).eval(), {"input": torch.randn(batch, 3, 224, 224)}
        return make

    def realistic(m):
        """torchvision's fresh weights give outputs far from a trained model's scale: BatchNorm's running
        statistics are 0 and 1, so MobileNetV2's activations shrink layer after layer to ~1e-9 at its output
        (below float16's smallest value: any half-precision engine returns 0 there), and ViT's classifier is
        zero (every output 0, which checks nothing). Random statistics overshoot the other way (ResNet-50's
        logits reached 4e13, past float16's largest). So the statistics are measured, as training leaves them:
        a few batches of random images in training mode, averaged (momentum None); and a random classifier."""
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
            for mod in bns:
                mod.reset_running_stats()
                mod.momentum = None  # a cumulative average over the calibration batches
            if bns:
                m.train()
                for _ in range(4):
                    m(torch.randn(8, 3, 224, 224, generator=g))
                m.eval()
            head = getattr(getattr(m, "heads", None), "head", None)
            if isinstance(head, torch.nn.Linear):
                head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.02)
        return m

    class LastHidden(torch.nn.Module):
        """A transformers model whose ONNX output is its last hidden state only (no pooler, no cache)."""
        def __init__(self, m, names):
            super().__init__()
            self.m, self.names = m, names

        def forward(self, *args):
            kw = dict(zip(self.names, args))
            if "past_key_values" not in kw and hasattr(self.m.config, "use_cache"):
                kw["use_cache"] = False
            return self.m(**kw).last_hidden_state

    def bert(**config):
        from transformers import BertConfig, BertModel
        m = BertModel(BertConfig(**config)).eval()  # BERT-base: 12 layers, hidden 768, 12 heads
        ids = torch.randint(0, 30000, (batch, seq))
        mask = torch.ones_like(ids)
        mask[1:, seq // 2:] = 0  # the second sequence padded: the mask path counts too
        types = torch.zeros_like(ids)
        types[:, seq // 4:] = 1  # two segments, so both token type embeddings are used
        names = ["input_ids", "attention_mask", "token_type_ids"]
        return wrap(m, names, bert, config), dict(zip(names, [ids, mask, types]))

    def gpt2(**config):
        from transformers import GPT2Config, GPT2Model
        m = GPT2Model(GPT2Config(**config)).eval()  # GPT-2 small: 12 layers, hidden 768, causal attention
        ids = torch.randint(0, 50257, (batch, seq))
        # With an attention mask (the second sequence padded at its end, as a batch of prompts is), and because
        # without one transformers looks for packed sequences with aten::diff, which ONNX cannot export.
        mask = torch.ones_like(ids)
        mask[1:, seq // 2:] = 0
        names = ["input_ids", "attention_mask"]
        return wrap(m, names, gpt2, config), dict(zip(names, [ids, mask]))

    def wrap(m, names, maker, config):
        w = LastHidden(m, names).eval()
        if not config:  # a second try, with the eager attention, should the export of the default one fail
            w.eager_fallback = lambda: maker(attn_implementation="eager")
        return w

    import torchvision
    return {"resnet50": vision(torchvision.models.resnet50), "mobilenet_v2": vision(torchvision.models.mobilenet_v2),
            "bert_base": bert, "gpt2": gpt2, "vit_b_16": vision(torchvision.models.vit_b_16)}


def torch_fp16_outputs(module, feeds, output_names):
    """PyTorch's own float16 outputs on the GPU ("torch_fp16__NAME"), where there is one: how far half precision
    alone takes the model from its float32 outputs, beside which a Kiln FP16 engine's error is judged. Converts
    the module (call it last)."""
    import torch
    if not torch.cuda.is_available():
        return {}
    try:
        m = module.half().cuda()
        ins = [t.half().cuda() if t.is_floating_point() else t.cuda() for t in feeds.values()]
        with torch.no_grad():
            out = m(*ins)
        outs = out if isinstance(out, (tuple, list)) else [out]
        return {"torch_fp16__" + n: o.float().cpu().numpy() for n, o in zip(output_names, outs)}
    except Exception as e:  # the context is optional; say why it is missing
        say(f"torch fp16 run failed: {type(e).__name__}: {str(e)[:200]}")
        return {}
    finally:
        torch.cuda.empty_cache()


def export_models(names, models_dir, batch, seq):
    """Writes NAME.onnx and NAME.npz (inputs and PyTorch's outputs) for each name; keeps pairs already there.
    Returns ({name: error text} for the models that could not be exported, {name: note})."""
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gpu_models import export  # the export call of the benchmark, so both check the same kind of file

    os.makedirs(models_dir, exist_ok=True)
    # nn.MultiheadAttention's fast path (taken under no_grad, as in export()) is one aten op the ONNX exporter
    # does not know; the slow path is the same math in exportable ops (ViT).
    if hasattr(torch.backends, "mha"):
        torch.backends.mha.set_fastpath_enabled(False)
    makers = torch_models(batch, seq)
    errors, notes = {}, {}
    for name in names:
        onnx_path, npz_path = os.path.join(models_dir, name + ".onnx"), os.path.join(models_dir, name + ".npz")
        if os.path.exists(onnx_path) and os.path.exists(npz_path):
            say(f"export {name}: {onnx_path} already there")
            continue
        t0 = time.time()
        try:
            torch.manual_seed(0)
            module, feeds = makers[name]()
            input_names = list(feeds)
            with torch.no_grad():
                out = module(*feeds.values())
            outs = out if isinstance(out, (tuple, list)) else [out]
            if len(outs) != 1:
                raise RuntimeError(f"{len(outs)} outputs; gpu_models.export names one output 'out'")
            output_names = ["out"]
            if os.path.exists(onnx_path):
                os.remove(onnx_path)  # an export cut short before its npz: do it again
            dynamic = {n: {0: "batch"} for n in input_names + output_names}
            try:
                export(module, list(feeds.values()), input_names, onnx_path, dynamic)
            except Exception as e:
                if not getattr(module, "eager_fallback", None):
                    raise
                # transformers' SDPA mask code may not trace; the eager attention computes the same thing.
                notes[name] = f"exported with eager attention; the SDPA export failed: {str(e)[:300]}"
                say(f"export {name}: {notes[name]}")
                torch.manual_seed(0)
                module, feeds = module.eager_fallback()
                with torch.no_grad():
                    outs = [module(*feeds.values())]
                if os.path.exists(onnx_path):
                    os.remove(onnx_path)
                export(module, list(feeds.values()), input_names, onnx_path, dynamic)
            arrays = {n: t.numpy() for n, t in feeds.items()}
            arrays.update({n: o.float().numpy() for n, o in zip(output_names, outs)})
            arrays.update(torch_fp16_outputs(module, feeds, output_names))
            np.savez(npz_path, **arrays)
            say(f"export {name}: {os.path.getsize(onnx_path) / 1e6:.0f} MB in {time.time() - t0:.0f} s")
        except Exception as e:  # one model that does not export never stops the others
            errors[name] = f"{type(e).__name__}: {str(e)[:1500]}"
            say(f"export {name}: FAILED {errors[name][:300]}")
        finally:
            module = feeds = out = outs = None
    return errors, notes


# ---- phase 2: check (numpy and onnx only) ----

def safe_file_name(name):
    """The file name `kiln run` gives an output (tools/kiln/cmd_run.cc safe_file_name)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def model_io(onnx_path):
    import onnx
    m = onnx.load(onnx_path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits], [o.name for o in m.graph.output]


class Model:
    def __init__(self, name, onnx_path, npz_path):
        self.name, self.onnx_path = name, onnx_path
        self.inputs, self.outputs = model_io(onnx_path)
        data = np.load(npz_path)
        missing = [n for n in self.inputs if n not in data.files]
        if missing:
            raise ValueError(f"{npz_path} has no array for input(s) {missing} (it has {data.files})")
        self.feeds = {n: data[n] for n in self.inputs}
        self.torch_outputs = {n: data[n] for n in self.outputs if n in data.files}  # optional
        self.torch_fp16_outputs = {n: data["torch_fp16__" + n] for n in self.outputs if "torch_fp16__" + n in data.files}
        self.size = os.path.getsize(onnx_path)


def parse_inspect(text):
    """Layers, backends, precisions, op types and CPU fallbacks from `kiln inspect` (Engine::inspect's format:
    '  #3 name [Op] backend=cuda kernel=k precision=fp16 time=0.1ms (not on the GPU: why) -> float32[..]')."""
    layers = []
    for line in text.splitlines():
        m = re.match(r"\s+#(\d+) (.*?) \[([^\]]*)\] backend=(\S+) kernel=(\S+)(.*)$", line)
        if not m:
            continue
        rest = m.group(6)
        if " ->" in rest:
            rest = rest[:rest.rindex(" ->")]
        reason = None
        if "(not on the GPU: " in rest:
            reason = rest[rest.index("(not on the GPU: ") + len("(not on the GPU: "):].rstrip()
            reason = reason[:-1] if reason.endswith(")") else reason
        p = re.search(r"precision=(\S+)", rest)
        layers.append({"name": m.group(2), "op": m.group(3), "backend": m.group(4), "kernel": m.group(5),
                       "precision": p.group(1) if p else None, "fallback": reason})

    def count(key):
        c = {}
        for l in layers:
            if l[key] is not None:
                c[l[key]] = c.get(l[key], 0) + 1
        return dict(sorted(c.items(), key=lambda kv: -kv[1]))

    fallbacks = [{"layer": l["name"], "op": l["op"], "reason": l["fallback"]} for l in layers if l["fallback"]]
    return {"layers": len(layers), "backends": count("backend"), "precisions": count("precision"),
            "ops": count("op"), "fallback_reasons": count("fallback"), "fallbacks": fallbacks[:40]}


def kiln_call(cmd, timeout):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return {"rc": p.returncode, "wall_s": round(time.time() - t0, 2), "stdout": p.stdout, "stderr": p.stderr}
    except subprocess.TimeoutExpired:  # subprocess.run has killed the kiln process
        return {"rc": None, "wall_s": round(time.time() - t0, 2), "timed_out": True, "stdout": "",
                "stderr": f"timed out after {timeout} s"}


def run_variant(args, model, variant, work):
    """Builds, runs and inspects one variant; returns the raw result (outputs as arrays, or an error).

    By default `kiln build` writes the engine, `kiln run` runs it and `kiln inspect` shows that very engine: one
    build (tactic timing is most of a GPU build) and the engine file's round trip checked too. With --direct,
    `kiln run` and `kiln inspect` each take the ONNX model and the flags; the inspect reads the run's timing cache,
    so it picks the same tactics."""
    name, device, opt, precision, extra = variant
    res = {"model": model.name, "variant": name, "device": device, "opt_level": opt, "precision": precision}
    if args.deadline and time.time() > args.deadline:
        res["error"] = "not run: --budget spent"
        return res
    vdir = os.path.join(work, model.name, name)
    os.makedirs(vdir, exist_ok=True)
    inputs = []
    for n in model.inputs:
        inputs += ["-i", f"{n}={os.path.join(work, model.name, 'inputs', safe_file_name(n) + '.npy')}"]
    shapes = ",".join(f"{n}:{'x'.join(str(d) for d in model.feeds[n].shape)}" for n in model.inputs
                      if model.feeds[n].ndim > 0)
    flags = ["--device", device, "--opt-level", str(opt), *extra] + (["--shapes", shapes] if shapes else [])
    out_dir = os.path.join(vdir, "out")
    engine = os.path.join(vdir, "model.kiln")
    say(f"  ... {model.name} {name} started")

    def call(step, cmd):
        res[step + "_cmd"] = " ".join(cmd)
        r = kiln_call(cmd, args.timeout)
        res[step + "_s"] = r["wall_s"]
        if r.get("timed_out"):
            res["timed_out"] = True
        if r["rc"] != 0 and step != "inspect":
            res["error"] = f"kiln {step}: " + (r["stderr"][-1500:] or r["stdout"][-1500:] or f"rc {r['rc']}")
        elif r["stderr"].strip():  # the builder's warnings (CPU fallbacks, layers kept in float32)
            res[step + "_stderr"] = r["stderr"][-800:]
        return r

    try:
        if args.direct:
            if device == "cuda":
                cache = os.path.join(vdir, "timing_cache.json")
                if os.path.exists(cache):
                    os.remove(cache)
                flags += ["--timing-cache", cache]
            r = call("run", [args.kiln, "run", model.onnx_path, *inputs, "--output-dir", out_dir, *flags])
            res["wall_s"] = res["run_s"]
            inspect_target = model.onnx_path
        else:
            r = call("build", [args.kiln, "build", model.onnx_path, "-o", engine, *flags])
            if r["rc"] != 0:
                return res
            r = call("run", [args.kiln, "run", engine, *inputs, "--output-dir", out_dir])
            res["wall_s"] = round(res["build_s"] + res["run_s"], 2)
            inspect_target, flags = engine, []
        if r["rc"] != 0:
            return res
        try:
            res["outputs"] = {n: read_output(out_dir, n) for n in model.outputs}
        except Exception as e:
            res["error"] = f"cannot read the outputs: {e}"
            return res
        ins = call("inspect", [args.kiln, "inspect", inspect_target, *flags])
        if ins["rc"] == 0:
            res["inspect"] = parse_inspect(ins["stdout"])
        else:
            res["inspect_error"] = ins["stderr"][-800:]
        return res
    finally:
        if os.path.exists(engine):
            os.remove(engine)  # BERT's is 400 MB; eleven variants of five models add up


def read_output(out_dir, name):
    base = os.path.join(out_dir, safe_file_name(name))
    if os.path.exists(base + ".npy"):
        return np.load(base + ".npy")
    import onnx  # kiln writes no .npy for some types (strings); the .pb always
    from onnx import numpy_helper
    return numpy_helper.to_array(onnx.load_tensor(base + ".pb"))


def compare(got, ref):
    """Worst output's max |got - ref| / max |ref| with its parts, or an error text."""
    worst = None
    for n, r in ref.items():
        if n not in got:
            return None, f"output '{n}' missing"
        g = got[n]
        if g.shape != r.shape:
            return None, f"output '{n}': shape {list(g.shape)}, reference {list(r.shape)}"
        g64, r64 = g.astype(np.float64), r.astype(np.float64)
        finite = np.isfinite(r64)
        if not np.array_equal(np.isfinite(g64), finite) or not np.array_equal(g64[~finite], r64[~finite],
                                                                                equal_nan=True):
            bad = int((np.isfinite(g64) != finite).sum())
            return None, f"output '{n}': NaN/Inf differ from the reference at {bad} elements"
        err = float(np.abs(g64[finite] - r64[finite]).max()) if finite.any() else 0.0
        scale = float(np.abs(r64[finite]).max()) if finite.any() else 0.0
        rel = err / scale if scale > 0 else err
        if worst is None or rel > worst["rel_err"]:
            worst = {"output": n, "rel_err": rel, "max_abs_err": err, "ref_max_abs": scale}
    return worst, None


class Checker:
    """Turns raw variant results into rows once the model's reference is known, and keeps the JSON current."""

    def __init__(self, args, results, json_path):
        self.args, self.results, self.json_path = args, results, json_path
        self.raw = {}        # (model, variant) -> raw result
        self.models = {}     # name -> Model

    def add(self, model, raw):
        self.raw[(model.name, raw["variant"])] = raw
        if raw["variant"] == REFERENCE:
            self.row(model, raw)
            for (m, v), r in list(self.raw.items()):
                if m == model.name and v != REFERENCE:
                    self.row(model, r)
        elif (model.name, REFERENCE) in self.raw:
            self.row(model, raw)

    def finish_pending(self):
        """Rows still waiting for a reference that never ran (budget): compared with PyTorch instead."""
        done = {(r["model"], r["variant"]) for r in self.results["rows"]}
        for (m, v), raw in self.raw.items():
            if (m, v) not in done:
                self.row(self.models[m], raw)

    def row(self, model, raw):
        row = {k: v for k, v in raw.items() if k != "outputs"}
        tol = TOLERANCES[raw["precision"]]
        row["tolerance"] = tol
        ref_raw = self.raw.get((model.name, REFERENCE), {})
        if raw["variant"] == REFERENCE or "outputs" not in ref_raw:
            ref, ref_name = model.torch_outputs, "torch"
        else:
            ref, ref_name = ref_raw["outputs"], REFERENCE
        row["reference"] = ref_name if ref else None
        if "outputs" in raw:
            if ref:
                worst, err = compare(raw["outputs"], ref)
                row["vs_reference"] = worst
                if err:
                    row["error"] = err
            if model.torch_outputs:
                worst, err = compare(raw["outputs"], model.torch_outputs)
                row["vs_torch"] = worst if worst else {"error": err}
                if raw["precision"] in ("fp16", "bf16") and model.torch_fp16_outputs:
                    # Context, not the test: PyTorch's own float16 against its float32.
                    worst, err = compare(model.torch_fp16_outputs, model.torch_outputs)
                    row["torch_fp16_vs_torch"] = worst if worst else {"error": err}
        vh = row.get("torch_fp16_vs_torch")
        if raw["precision"] == "fp16" and vh and "rel_err" in vh and 2 * vh["rel_err"] > tol:
            # Some models lose more than the fixed tolerance to half precision itself (ResNet-50's random
            # classifier sums 2048 positive features into logits that cancel): PyTorch's own float16 run shows
            # how much, so within twice that Kiln is as accurate as the framework in the same precision.
            tol = row["tolerance"] = 2 * vh["rel_err"]
            row["tolerance_from"] = "2x PyTorch's own fp16 error"
        vs = row.get("vs_reference")
        if raw["variant"] == REFERENCE and not ref and "outputs" in raw:
            row["pass"] = True  # nothing to check the reference against (no PyTorch outputs in the npz)
        else:
            row["pass"] = bool(vs and "error" not in row and vs["rel_err"] <= tol)
        self.results["rows"] = [r for r in self.results["rows"]
                                if (r["model"], r["variant"]) != (row["model"], row["variant"])] + [row]
        self.write()
        say(line(row))

    def write(self):
        tmp = self.json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.results, f, indent=1, default=float)
        os.replace(tmp, self.json_path)


def line(row):
    ins = row.get("inspect") or {}
    backends = ", ".join(f"{k} {v}" for k, v in ins.get("backends", {}).items())
    text = f"{row['model']:14s} {row['variant']:13s} {'PASS' if row['pass'] else 'FAIL'}"
    vs, vt = row.get("vs_reference"), row.get("vs_torch")
    if vs:
        text += f"  err {vs['rel_err']:.2e} (tol {row['tolerance']:.1e}, vs {row['reference']})"
    elif row["variant"] == REFERENCE and "error" not in row:
        text += "  (no PyTorch output to check it against)"
    if vt and "rel_err" in vt and row.get("reference") != "torch":
        text += f"  torch {vt['rel_err']:.2e}"
    vh = row.get("torch_fp16_vs_torch")
    if vh and "rel_err" in vh:
        text += f"  (PyTorch's own fp16 {vh['rel_err']:.2e})"
    if "wall_s" in row:
        text += f"  {row['wall_s']:.1f} s" + (f" (build {row['build_s']:.1f})" if "build_s" in row else "")
    if ins:
        text += f"  layers {ins['layers']} ({backends})"
        if ins["fallback_reasons"]:
            text += "  fallbacks: " + "; ".join(f"{n}x {r[:80]}" for r, n in list(ins["fallback_reasons"].items())[:3])
    if row.get("error"):
        text += "  error: " + " ".join(row["error"].split())[:300]
    return text


def cuda_unavailable(args, work):
    """Why `kiln --device cuda` cannot run here (None when it can), from a one-Relu model."""
    import onnx
    from onnx import TensorProto, helper
    path = os.path.join(work, "cuda_probe.onnx")
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    r = kiln_call([args.kiln, "inspect", path, "--device", "cuda"], 120)
    return None if r["rc"] == 0 else (r["stderr"].strip() or f"rc {r['rc']}")


def load_models(args, models_dir, names, results, checker):
    models = []
    for name in names:
        onnx_path, npz_path = os.path.join(models_dir, name + ".onnx"), os.path.join(models_dir, name + ".npz")
        try:
            if not os.path.exists(onnx_path):
                raise FileNotFoundError(results["export_errors"].get(name, f"{onnx_path} does not exist"))
            if not os.path.exists(npz_path):
                raise FileNotFoundError(f"{npz_path} (the inputs) does not exist")
            models.append(Model(name, onnx_path, npz_path))
        except Exception as e:
            row = {"model": name, "variant": "load", "pass": False, "error": f"{type(e).__name__}: {e}"}
            results["rows"].append(row)
            checker.write()
            say(line(row))
    return models


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", required=True, help="the kiln binary")
    ap.add_argument("--out", required=True, help="folder for model_check.json")
    ap.add_argument("--models", help="folder of NAME.onnx + NAME.npz to check (no export, no torch)")
    ap.add_argument("--work", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                "out", "model_check"),
                    help="exported models (kept: a later call on a warm machine reuses them) and kiln outputs; "
                         "outside --out, whose files come back from the GPU machine (default: out/model_check, "
                         "ignored by git)")
    ap.add_argument("--only", help="comma-separated model names (default: all)")
    ap.add_argument("--variants", help="comma-separated variant names (default: all; the reference always runs)")
    dev = ap.add_mutually_exclusive_group()
    dev.add_argument("--cpu-only", action="store_true")
    dev.add_argument("--cuda-only", action="store_true", help="CUDA variants (and the CPU reference) only")
    ap.add_argument("--jobs", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                    help="CPU variants run at once (each kiln CPU run is single-threaded)")
    ap.add_argument("--timeout", type=float, default=400, help="seconds per kiln call")
    ap.add_argument("--budget", type=float, default=0, help="seconds after which no new variant starts (0: none)")
    ap.add_argument("--direct", action="store_true",
                    help="kiln run/inspect on the ONNX model (two builds), not build, then run/inspect the engine")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    t_start = time.time()
    args.deadline = t_start + args.budget if args.budget > 0 else 0
    args.kiln = os.path.abspath(args.kiln)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    json_path = os.path.join(args.out, "model_check.json")

    results = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kiln": args.kiln,
               "tolerances": TOLERANCES, "reference": REFERENCE, "export_errors": {}, "rows": []}
    checker = Checker(args, results, json_path)
    if args.models:
        models_dir = os.path.abspath(args.models)
        names = sorted(f[:-5] for f in os.listdir(models_dir) if f.endswith(".onnx"))
    else:
        models_dir = os.path.join(os.path.abspath(args.work), "models")
        names = MODELS
    if args.only:
        wanted = args.only.split(",")
        unknown = [n for n in wanted if n not in names]
        if unknown:
            ap.error(f"--only: no model {unknown} (there are {names})")
        names = wanted
    if not args.models:
        import torch
        import torchvision
        import transformers
        results["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                               "transformers": transformers.__version__}
        torch.set_num_threads(os.cpu_count() or 1)
        results["export_errors"], results["export_notes"] = export_models(names, models_dir, args.batch, args.seq)
    checker.write()

    variants = [v for v in VARIANTS if not (args.cpu_only and v[1] == "cuda")
                and not (args.cuda_only and v[1] == "cpu" and v[0] != REFERENCE)]
    if args.variants:
        wanted = args.variants.split(",")
        unknown = [w for w in wanted if w not in [v[0] for v in VARIANTS]]
        if unknown:
            ap.error(f"--variants: no variant {unknown} (there are {[v[0] for v in VARIANTS]})")
        variants = [v for v in variants if v[0] in wanted or v[0] == REFERENCE]

    models = load_models(args, models_dir, names, results, checker)
    checker.models = {m.name: m for m in models}
    for m in models:  # the inputs as .npy files for `kiln run -i NAME=FILE`
        os.makedirs(os.path.join(args.work, m.name, "inputs"), exist_ok=True)
        for n, a in m.feeds.items():
            np.save(os.path.join(args.work, m.name, "inputs", safe_file_name(n) + ".npy"), a)
    no_cuda = cuda_unavailable(args, args.work) if any(v[1] == "cuda" for v in variants) else None
    if no_cuda:
        say(f"CUDA is not available: {no_cuda} (CUDA variants fail; --cpu-only skips them)")
        results["cuda_unavailable"] = no_cuda

    # The biggest models' references first: they take longest on one core and every row of the model waits.
    order = sorted(models, key=lambda m: -m.size)
    cpu_pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs))
    gpu_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    futures = {}
    for v in variants:
        for m in order:
            if v[1] == "cuda" and no_cuda:
                checker.add(m, {"model": m.name, "variant": v[0], "device": "cuda", "opt_level": v[2],
                                "precision": v[3], "error": "not run: CUDA is not available"})
                continue
            pool = gpu_pool if v[1] == "cuda" else cpu_pool
            futures[pool.submit(run_variant, args, m, v, args.work)] = (m, v)
    for f in concurrent.futures.as_completed(futures):
        m, v = futures[f]
        try:
            raw = f.result()
        except Exception as e:  # a bug here must not lose the other rows
            raw = {"model": m.name, "variant": v[0], "device": v[1], "opt_level": v[2], "precision": v[3],
                   "error": f"{type(e).__name__}: {e}"}
        checker.add(m, raw)
    checker.finish_pending()
    cpu_pool.shutdown()
    gpu_pool.shutdown()

    rows = results["rows"]
    failed = [r for r in rows if not r["pass"]]
    results["summary"] = {"rows": len(rows), "passed": len(rows) - len(failed), "failed": len(failed),
                          "seconds": round(time.time() - t_start, 1)}
    checker.write()
    say(f"\n{len(rows) - len(failed)} of {len(rows)} passed in {time.time() - t_start:.0f} s; wrote {json_path}")
    order_of = {v[0]: i for i, v in enumerate(VARIANTS)}
    for r in sorted(failed, key=lambda r: (r["model"], order_of.get(r["variant"], -1))):
        say("FAILED " + line(r))
    return 0 if rows and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
