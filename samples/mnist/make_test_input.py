#!/usr/bin/env python3
"""Write the first K held-out MNIST digits as a .npy input file for `kiln run`.

Output:
    <out>.npy          float32 [K, 1, 28, 28], pixels / 255 (the model's preprocessing, see mnist_data.py)
    <labels>           one label (0-9) per line, same order

The held-out digits are the last 2,000 of the data set (indices 8000..9999); digit i of the file is
data-set index 8000 + i.

Usage (from the project root):
    python3 samples/mnist/make_test_input.py -k 8 \
        --out samples/mnist/digits_8.npy --labels samples/mnist/labels_8.txt
    kiln run samples/mnist/mnist_cnn.onnx --input input=samples/mnist/digits_8.npy
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_data  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", type=int, default=8, help="number of held-out digits (1..2000)")
    ap.add_argument("--out", default=None, help="output .npy (default samples/mnist/digits_K.npy)")
    ap.add_argument("--labels", default=None, help="output labels file (default samples/mnist/labels_K.txt)")
    ap.add_argument("--data", default=None, help="MNIST directory (default ../shared/datasets/mnist)")
    args = ap.parse_args()
    _, (x_ho, y_ho) = mnist_data.split(args.data)
    if not 1 <= args.k <= len(x_ho):
        ap.error("-k must be in 1..%d" % len(x_ho))
    out = args.out or os.path.join(mnist_data.HERE, "digits_%d.npy" % args.k)
    labels = args.labels or os.path.join(mnist_data.HERE, "labels_%d.txt" % args.k)
    x = np.ascontiguousarray(x_ho[:args.k], dtype=np.float32)
    np.save(out, x)
    with open(labels, "w") as f:
        f.write("".join("%d\n" % v for v in y_ho[:args.k]))
    print("wrote %s %s %s and %s: %s" % (out, x.dtype, list(x.shape), labels, " ".join(map(str, y_ho[:args.k]))))


if __name__ == "__main__":
    main()
