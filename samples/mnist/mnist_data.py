"""Shared helpers for the MNIST sample: read the IDX files and preprocess them.

Preprocessing (the contract the exported model expects):
    input = float32(pixels) / 255.0, layout NCHW [N, 1, 28, 28], 0.0 = background, 1.0 = ink.
No mean/std normalisation is applied.

The data set (../../../shared/datasets/mnist relative to this file, i.e. <project>/../shared/datasets/mnist)
holds 10,000 digits: the first 8,000 are the training set, the last 2,000 the held-out set.
"""
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "datasets", "mnist"))
NUM_TRAIN = 8000


def data_dir():
    return os.environ.get("KILN_MNIST_DIR", DEFAULT_DATA_DIR)


def load_raw(directory=None):
    """Returns (images uint8 [10000, 28, 28], labels uint8 [10000])."""
    directory = directory or data_dir()
    with open(os.path.join(directory, "images-idx3-ubyte"), "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051, "bad image magic %d" % magic
        images = np.frombuffer(f.read(count * rows * cols), dtype=np.uint8).reshape(count, rows, cols)
    with open(os.path.join(directory, "labels-idx1-ubyte"), "rb") as f:
        magic, count_l = struct.unpack(">II", f.read(8))
        assert magic == 2049, "bad label magic %d" % magic
        labels = np.frombuffer(f.read(count_l), dtype=np.uint8)
    assert count == count_l
    return images, labels


def preprocess(images_u8):
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1] (pixels / 255)."""
    return (images_u8.astype(np.float32) / np.float32(255.0))[:, None, :, :]


def split(directory=None):
    """Returns ((x_train, y_train), (x_heldout, y_heldout)); x is preprocessed float32 NCHW."""
    images, labels = load_raw(directory)
    x = preprocess(images)
    y = labels.astype(np.int64)
    return (x[:NUM_TRAIN], y[:NUM_TRAIN]), (x[NUM_TRAIN:], y[NUM_TRAIN:])
