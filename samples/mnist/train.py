#!/usr/bin/env python3
"""Train Kiln's MNIST sample CNN with NumPy only and export it to ONNX.

Network (ONNX view, NCHW):
    input  float32 [batch, 1, 28, 28]      pixels / 255 (see preprocessing below)
    Conv(1->16, 3x3, pad 1) + Relu + MaxPool 2x2       -> [batch, 16, 14, 14]
    Conv(16->32, 3x3, pad 1) + Relu + MaxPool 2x2      -> [batch, 32, 7, 7]
    Flatten                                            -> [batch, 1568]
    Gemm(1568 -> 64) + Relu                            -> [batch, 64]
    Gemm(64 -> 10)                                     -> logits [batch, 10]

Preprocessing: input = float32(uint8 pixel) / 255.0, shape [N, 1, 28, 28]; no mean/std normalisation.
The logits are raw (no Softmax); the predicted class is argmax over axis 1.

Data: the first 8,000 digits of ../shared/datasets/mnist (from the project root) are used for training;
the last 2,000 are never looked at during training (held-out set, see verify_onnx.py).

Training: im2col convolutions (NHWC internally, exported as NCHW/OIHW), softmax cross-entropy, Adam,
mini-batches of 64, 25 epochs, random rotation/scale/shift of the training images, cosine learning-rate
decay, an exponential moving average of the weights (exported), fixed seed.
Deterministic for a given NumPy/BLAS build and thread count.

Usage (from the project root):
    python3 samples/mnist/train.py
writes samples/mnist/mnist_cnn.onnx (about 150 s of CPU time, single-threaded; NumPy's BLAS is limited to
one thread unless OMP_NUM_THREADS / OPENBLAS_NUM_THREADS are set).
"""
import argparse
import os
import sys
import time

# One BLAS thread unless the caller says otherwise: the matrices here are small, so extra BLAS threads cost
# more CPU than they save (measured: ~6 s CPU per epoch with 1 thread, ~18 s with 2 on a busy machine), and a
# fixed thread count keeps the result bit-for-bit reproducible.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_data  # noqa: E402

F32 = np.float32


# ----------------------------------------------------------------------------------------------
# Layers (NHWC internally)
# ----------------------------------------------------------------------------------------------
def im2col3x3(x):
    """x [N,H,W,C] -> cols [N*H*W, 9*C] for a 3x3 kernel, stride 1, pad 1. Column index (kh*3+kw)*C + c."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.empty((n, h, w, 9, c), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, i * 3 + j, :] = xp[:, i:i + h, j:j + w, :]
    return cols.reshape(n * h * w, 9 * c)


def col2im3x3(dcols, shape):
    """Adjoint of im2col3x3: dcols [N*H*W, 9*C] -> dx [N,H,W,C]."""
    n, h, w, c = shape
    dcols = dcols.reshape(n, h, w, 9, c)
    dxp = np.zeros((n, h + 2, w + 2, c), dtype=dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, i:i + h, j:j + w, :] += dcols[:, :, :, i * 3 + j, :]
    return dxp[:, 1:-1, 1:-1, :]


def maxpool2_forward(x):
    n, h, w, c = x.shape
    xr = x.reshape(n, h // 2, 2, w // 2, 2, c)
    out = xr.max(axis=(2, 4))
    return out, (xr, out)


def maxpool2_backward(dout, cache):
    xr, out = cache
    # Gradient goes to the window's maximum. Exact ties only occur in practice between zeros produced by
    # the preceding Relu, whose gradient the Relu mask zeroes anyway, so no tie-breaking is needed.
    mask = xr == out[:, :, None, :, None, :]
    dx = mask * dout[:, :, None, :, None, :]
    n, h2, _, w2, _, c = xr.shape
    return dx.reshape(n, h2 * 2, w2 * 2, c).astype(F32, copy=False)


class Net:
    def __init__(self, rng, dropout=0.0):
        self.rng, self.dropout = rng, dropout
        def he(shape, fan_in):
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(F32)

        self.p = {
            "w1": he((9 * 1, 16), 9 * 1), "b1": np.zeros(16, F32),
            "w2": he((9 * 16, 32), 9 * 16), "b2": np.zeros(32, F32),
            # fc1 rows are in NHWC flatten order (h, w, c); converted to NCHW order at export.
            "w3": he((7 * 7 * 32, 64), 7 * 7 * 32), "b3": np.zeros(64, F32),
            "w4": (rng.standard_normal((64, 10)) * np.sqrt(1.0 / 64)).astype(F32), "b4": np.zeros(10, F32),
        }

    def forward(self, x_nhwc, train=False):
        p = self.p
        n = x_nhwc.shape[0]
        c1 = im2col3x3(x_nhwc)                                   # [N*784, 9]
        z1 = (c1 @ p["w1"] + p["b1"]).reshape(n, 28, 28, 16)
        a1 = np.maximum(z1, 0)
        m1, pc1 = maxpool2_forward(a1)                           # [N,14,14,16]
        c2 = im2col3x3(m1)                                       # [N*196, 144]
        z2 = (c2 @ p["w2"] + p["b2"]).reshape(n, 14, 14, 32)
        a2 = np.maximum(z2, 0)
        m2, pc2 = maxpool2_forward(a2)                           # [N,7,7,32]
        f = m2.reshape(n, -1)
        z3 = f @ p["w3"] + p["b3"]
        a3 = np.maximum(z3, 0)
        keep = None
        if train and self.dropout > 0:  # inverted dropout on the fc1 activations (training only)
            keep = (self.rng.random(a3.shape) >= self.dropout).astype(F32) / F32(1 - self.dropout)
            a3 = a3 * keep
        logits = a3 @ p["w4"] + p["b4"]
        if train:
            self.cache = (x_nhwc.shape, c1, z1, pc1, m1.shape, c2, z2, pc2, f, z3, a3, keep)
        return logits

    def backward(self, dlogits):
        p = self.p
        (xshape, c1, z1, pc1, m1shape, c2, z2, pc2, f, z3, a3, keep) = self.cache
        n = dlogits.shape[0]
        g = {}
        g["w4"] = a3.T @ dlogits
        g["b4"] = dlogits.sum(0)
        da3 = dlogits @ p["w4"].T
        if keep is not None:
            da3 = da3 * keep
        dz3 = da3 * (z3 > 0)
        g["w3"] = f.T @ dz3
        g["b3"] = dz3.sum(0)
        df = dz3 @ p["w3"].T
        dm2 = df.reshape(n, 7, 7, 32)
        da2 = maxpool2_backward(dm2, pc2)
        dz2 = (da2 * (z2 > 0)).reshape(-1, 32)
        g["w2"] = c2.T @ dz2
        g["b2"] = dz2.sum(0)
        dc2 = dz2 @ p["w2"].T
        dm1 = col2im3x3(dc2, m1shape)
        da1 = maxpool2_backward(dm1, pc1)
        dz1 = (da1 * (z1 > 0)).reshape(-1, 16)
        g["w1"] = c1.T @ dz1
        g["b1"] = dz1.sum(0)
        self.cache = None
        return g


class Adam:
    def __init__(self, params, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params, grads, lr):
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        for k in params:
            g = grads[k]
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            update = (lr / bc1) * self.m[k] / (np.sqrt(self.v[k] / bc2) + self.eps)
            params[k] -= update.astype(F32)


def softmax_xent(logits, y):
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(1, keepdims=True)
    n = logits.shape[0]
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()
    d = prob
    d[np.arange(n), y] -= 1
    return float(loss), (d / n).astype(F32)


def random_shift(xb, rng, max_shift):
    """xb [B,28,28,1]: shift each image by up to +-max_shift pixels (zero fill)."""
    if max_shift <= 0:
        return xb
    b = xb.shape[0]
    m = max_shift
    xp = np.pad(xb, ((0, 0), (m, m), (m, m), (0, 0)))
    out = np.empty_like(xb)
    offs = rng.integers(0, 2 * m + 1, size=(b, 2))
    for k in range(b):
        dy, dx = offs[k]
        out[k] = xp[k, dy:dy + 28, dx:dx + 28]
    return out


def _gauss_matrix(n, sigma):
    i = np.arange(n, dtype=np.float64)
    g = np.exp(-(i[:, None] - i[None, :]) ** 2 / (2 * sigma * sigma))
    return g / g.sum(1, keepdims=True)


def random_affine(xb, rng, max_shift, max_rot_deg, max_scale, elastic_alpha=0.0, elastic_sigma=4.0):
    """xb [B,28,28,1]: random rotation (+-max_rot_deg), scale (1 +- max_scale) about the centre and shift
    (+-max_shift pixels, continuous), plus optionally an elastic distortion (Simard et al. 2003: a uniform
    random displacement field smoothed by a Gaussian of elastic_sigma pixels, scaled by elastic_alpha);
    bilinear sampling, zero fill."""
    b = xb.shape[0]
    img = np.pad(xb[..., 0], ((0, 0), (1, 1), (1, 1)))                 # [B,30,30], zero border
    th = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, b))
    sc = rng.uniform(1 - max_scale, 1 + max_scale, b)
    t = rng.uniform(-max_shift, max_shift, (b, 2))
    c = 13.5
    yy, xx = np.meshgrid(np.arange(28, dtype=np.float64) - c, np.arange(28, dtype=np.float64) - c, indexing="ij")
    cos, sin = (np.cos(th) / sc)[:, None, None], (np.sin(th) / sc)[:, None, None]
    # inverse map: output pixel -> source pixel
    sy = cos * (yy - t[:, 0, None, None]) - sin * (xx - t[:, 1, None, None]) + c + 1
    sx = sin * (yy - t[:, 0, None, None]) + cos * (xx - t[:, 1, None, None]) + c + 1
    if elastic_alpha > 0:
        g = _gauss_matrix(28, elastic_sigma)
        d = rng.uniform(-1, 1, (2, b, 28, 28))
        d = elastic_alpha * (g @ d @ g.T)
        sy = sy + d[0]
        sx = sx + d[1]
    sy = np.clip(sy, 0, 28.999)
    sx = np.clip(sx, 0, 28.999)
    y0 = np.floor(sy).astype(np.int64)
    x0 = np.floor(sx).astype(np.int64)
    fy = (sy - y0).astype(F32)
    fx = (sx - x0).astype(F32)
    flat = img.reshape(b, -1)
    base = (np.arange(b) * 900)[:, None, None]
    def g(yi, xi):
        return np.take(flat, base + yi * 30 + xi)
    out = (g(y0, x0) * (1 - fy) * (1 - fx) + g(y0, x0 + 1) * (1 - fy) * fx +
           g(y0 + 1, x0) * fy * (1 - fx) + g(y0 + 1, x0 + 1) * fy * fx)
    return out[..., None].astype(F32)


def predict(net, x_nchw, batch=500):
    x = x_nchw.transpose(0, 2, 3, 1)
    out = [net.forward(x[i:i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(out).argmax(1)


# ----------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------
def export_onnx(net, path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p = net.p
    # conv weights: [kh*3+kw, cin] x cout  ->  OIHW
    w1 = p["w1"].reshape(3, 3, 1, 16).transpose(3, 2, 0, 1)
    w2 = p["w2"].reshape(3, 3, 16, 32).transpose(3, 2, 0, 1)
    # fc1: rows in (h, w, c) order -> NCHW flatten order (c, h, w); Gemm with transB=1 wants [out, in].
    w3 = p["w3"].reshape(7, 7, 32, 64).transpose(2, 0, 1, 3).reshape(1568, 64).T
    w4 = p["w4"].T
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(w1, F32), "conv1.weight"),
        numpy_helper.from_array(p["b1"].astype(F32), "conv1.bias"),
        numpy_helper.from_array(np.ascontiguousarray(w2, F32), "conv2.weight"),
        numpy_helper.from_array(p["b2"].astype(F32), "conv2.bias"),
        numpy_helper.from_array(np.ascontiguousarray(w3, F32), "fc1.weight"),
        numpy_helper.from_array(p["b3"].astype(F32), "fc1.bias"),
        numpy_helper.from_array(np.ascontiguousarray(w4, F32), "fc2.weight"),
        numpy_helper.from_array(p["b4"].astype(F32), "fc2.bias"),
    ]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1)
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], name="conv1", **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1", **pool),
        helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"], name="conv2", **conv),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("MaxPool", ["relu2"], ["pool2"], name="pool2", **pool),
        helper.make_node("Flatten", ["pool2"], ["flatten"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flatten", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1",
                         alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Relu", ["fc1"], ["relu3"], name="relu3"),
        helper.make_node("Gemm", ["relu3", "fc2.weight", "fc2.bias"], ["logits"], name="fc2",
                         alpha=1.0, beta=1.0, transB=1),
    ]
    graph = helper.make_graph(
        nodes, "mnist_cnn",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, producer_name="kiln-samples-mnist-train",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model.doc_string = ("MNIST CNN for Kiln samples. Input: float32 [batch,1,28,28] = pixels/255 "
                        "(0 = background). Output: logits [batch,10], argmax = digit.")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return model


# ----------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--aug", choices=["none", "shift", "affine"], default="affine",
                    help="training augmentation: integer shifts, or rotation+scale+shift (bilinear)")
    ap.add_argument("--shift", type=float, default=2, help="max random shift in pixels")
    ap.add_argument("--rot", type=float, default=12, help="max rotation in degrees (affine)")
    ap.add_argument("--scale", type=float, default=0.1, help="max relative scale change (affine)")
    ap.add_argument("--elastic", type=float, default=0.0,
                    help="elastic distortion strength alpha in pixels (affine; 0 = off)")
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout on the fc1 activations")
    ap.add_argument("--wd", type=float, default=0.0, help="decoupled weight decay (AdamW) on weights")
    ap.add_argument("--ema", type=float, default=0.998,
                    help="decay of the exponential moving average of the weights that is evaluated and "
                         "exported (0 = export the raw weights)")
    ap.add_argument("--val", type=int, default=0,
                    help="tuning only: hold out the last VAL training digits as a validation set")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--data", default=None, help="MNIST directory (default ../shared/datasets/mnist)")
    ap.add_argument("--out", default=os.path.join(mnist_data.HERE, "mnist_cnn.onnx"))
    ap.add_argument("--report-heldout", action="store_true",
                    help="also print held-out accuracy after each epoch (monitoring only; not used for training)")
    args = ap.parse_args()

    (x_tr, y_tr), (x_ho, y_ho) = mnist_data.split(args.data)
    if args.val:
        x_va, y_va = x_tr[-args.val:], y_tr[-args.val:]
        x_tr, y_tr = x_tr[:-args.val], y_tr[:-args.val]
    x_tr_nhwc = np.ascontiguousarray(x_tr.transpose(0, 2, 3, 1))
    rng = np.random.default_rng(args.seed)
    net = Net(rng, args.dropout)
    opt = Adam(net.p)
    ema = {k: v.copy() for k, v in net.p.items()}
    n = len(x_tr)
    steps_per_epoch = (n + args.batch - 1) // args.batch
    total_steps = args.epochs * steps_per_epoch
    step = 0
    t0, c0 = time.time(), time.process_time()
    for epoch in range(args.epochs):
        perm = rng.permutation(n)
        loss_sum, correct = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch:(s + 1) * args.batch]
            xb = x_tr_nhwc[idx]
            if args.aug == "shift":
                xb = random_shift(xb, rng, int(args.shift))
            elif args.aug == "affine":
                xb = random_affine(xb, rng, args.shift, args.rot, args.scale, args.elastic)
            yb = y_tr[idx]
            logits = net.forward(xb, train=True)
            loss, d = softmax_xent(logits, yb)
            grads = net.backward(d)
            lr = args.lr * 0.5 * (1 + np.cos(np.pi * step / total_steps))
            opt.step(net.p, grads, lr)
            if args.wd:
                for k in ("w1", "w2", "w3", "w4"):
                    net.p[k] *= F32(1 - lr * args.wd)
            if args.ema:
                d = F32(min(args.ema, (1.0 + step) / (10.0 + step)))
                for k in ema:
                    ema[k] *= d
                    ema[k] += (1 - d) * net.p[k]
            step += 1
            loss_sum += loss * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        msg = "epoch %2d  loss %.4f  train-acc %.4f  lr %.2e  %.1fs (cpu %.1fs)" % (
            epoch + 1, loss_sum / n, correct / n, lr, time.time() - t0, time.process_time() - c0)
        if args.val:
            msg += "  val-acc %.4f" % (predict(net, x_va) == y_va).mean()
            if args.ema:
                raw, net.p = net.p, ema
                msg += "  val-acc(ema) %.4f" % (predict(net, x_va) == y_va).mean()
                net.p = raw
        if args.report_heldout:
            msg += "  heldout-acc %.4f" % (predict(net, x_ho) == y_ho).mean()
        print(msg, flush=True)
    train_time, cpu_time = time.time() - t0, time.process_time() - c0
    if args.ema:
        net.p = ema
    acc_tr = (predict(net, x_tr) == y_tr).mean()
    acc_ho = (predict(net, x_ho) == y_ho).mean()
    print("training time %.1fs wall, %.1fs CPU; NumPy accuracy: train %.4f, held-out (last 2,000) %.4f" % (
        train_time, cpu_time, acc_tr, acc_ho))
    export_onnx(net, args.out)
    print("wrote %s (%d bytes), onnx.checker OK" % (args.out, os.path.getsize(args.out)))
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: skipped the NumPy/ONNX parity check (see verify_onnx.py)")
        return
    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    ref = net.forward(x_ho[:500].transpose(0, 2, 3, 1))
    got = sess.run(["logits"], {"input": x_ho[:500]})[0]
    print("NumPy vs onnxruntime logits on 500 held-out digits: max abs diff %.2e" % np.abs(ref - got).max())


if __name__ == "__main__":
    main()
