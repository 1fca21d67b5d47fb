#!/usr/bin/env python3
"""Check samples/mnist/mnist_cnn.onnx with onnx.checker and measure its accuracy with onnxruntime
on the 2,000 held-out digits (the last 2,000 of ../shared/datasets/mnist; never used in training).

Usage (from the project root; needs `pip install onnxruntime`):
    python3 samples/mnist/verify_onnx.py
"""
import argparse
import os
import sys

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_data  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(mnist_data.HERE, "mnist_cnn.onnx"))
    ap.add_argument("--data", default=None, help="MNIST directory (default ../shared/datasets/mnist)")
    args = ap.parse_args()

    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    inp, out = model.graph.input[0], model.graph.output[0]
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    print("model %s: %d bytes, ir_version %d, opset %d, %s %s -> %s %s, ops %s" % (
        args.model, os.path.getsize(args.model), model.ir_version, model.opset_import[0].version,
        inp.name, dims(inp), out.name, dims(out), " ".join(n.op_type for n in model.graph.node)))

    import onnxruntime as ort
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    _, (x_ho, y_ho) = mnist_data.split(args.data)
    logits = np.concatenate([sess.run(["logits"], {"input": x_ho[i:i + 250]})[0]
                             for i in range(0, len(x_ho), 250)])
    assert logits.shape == (len(x_ho), 10), logits.shape
    one = sess.run(["logits"], {"input": x_ho[:1]})[0]  # batch 1 through the dynamic batch dimension
    assert np.allclose(one, logits[:1], atol=1e-4)
    pred = logits.argmax(1)
    correct = int((pred == y_ho).sum())
    print("onnxruntime %s held-out accuracy: %d/%d = %.2f%%" % (
        ort.__version__, correct, len(y_ho), 100.0 * correct / len(y_ho)))
    print("first 8 held-out: labels %s, predicted %s" % (" ".join(map(str, y_ho[:8])), " ".join(map(str, pred[:8]))))
    return 0 if correct / len(y_ho) >= 0.985 else 1


if __name__ == "__main__":
    sys.exit(main())
