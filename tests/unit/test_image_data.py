"""The Fashion-MNIST idx loader on small idx files the tests write byte by byte (gzip and raw),
checked against numpy views of those very bytes; the seeded validation split; malformed files and
a missing folder named with the fix; and, where Debian's ``dataset-fashion-mnist`` is installed,
the real files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import causal_nb as cnb
from causal_nb.data.images import FASHION_MNIST_DIR, read_idx


def idx_bytes(arr: np.ndarray, type_byte: int = 0x08) -> bytes:
    """The idx encoding written out by hand: magic 00 00 <type> <n_dims>, big-endian sizes, data."""
    return bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_set(folder, n_train=40, n_test=12, h=5, w=4, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    data = {"train": (rng.integers(0, 256, (n_train, h, w), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8)),
            "t10k": (rng.integers(0, 256, (n_test, h, w), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))}
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in data.items():
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            raw = idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_parse_to_the_bytes_written(tmp_path, gz):
    data = write_set(tmp_path, gz=gz)
    test = cnb.load_fashion_mnist("test", data_dir=tmp_path)
    x, y = data["t10k"]
    assert test.images.shape == (12, 1, 5, 4) and test.images.dtype.is_floating_point
    # the raw bytes after the 16-byte header, viewed by numpy, are the pixels
    raw = np.frombuffer(idx_bytes(x)[16:], dtype=np.uint8).reshape(12, 5, 4)
    assert np.array_equal(np.rint(test.images[:, 0].numpy() * 255).astype(np.uint8), raw)
    assert np.array_equal(test.labels.numpy(), np.frombuffer(idx_bytes(y)[8:], dtype=np.uint8))
    assert test.classes == cnb.FASHION_MNIST_CLASSES and test.split == "test"


def test_the_validation_split_is_held_out_of_train_and_seeded(tmp_path):
    data = write_set(tmp_path)
    train = cnb.load_fashion_mnist("train", data_dir=tmp_path, val_size=10, seed=1)
    val = cnb.load_fashion_mnist("val", data_dir=tmp_path, val_size=10, seed=1)
    assert len(train) == 30 and len(val) == 10
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert sorted(train.indices.tolist() + val.indices.tolist()) == list(range(40))
    x, y = data["train"]
    assert np.array_equal(val.labels.numpy(), y[val.indices.numpy()])
    assert np.allclose(val.images[:, 0].numpy(), x[val.indices.numpy()] / 255.0)
    again = cnb.load_fashion_mnist("val", data_dir=tmp_path, val_size=10, seed=1)
    other = cnb.load_fashion_mnist("val", data_dir=tmp_path, val_size=10, seed=2)
    assert again.indices.tolist() == val.indices.tolist() and other.indices.tolist() != val.indices.tolist()
    task = cnb.ImageClassificationTask(val)  # an ImageSet carries its labels into the task
    assert task.labels.tolist() == val.labels.tolist()


def test_a_missing_folder_names_both_routes(tmp_path):
    with pytest.raises(cnb.ImageDataError, match=r"apt-get install dataset-fashion-mnist.*data_dir="):
        cnb.load_fashion_mnist("train", data_dir=tmp_path)
    with pytest.raises(cnb.ImageDataError, match="not a folder"):
        cnb.load_fashion_mnist("train", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        cnb.load_fashion_mnist("validation", data_dir=tmp_path)


def test_malformed_files_are_named(tmp_path):
    write_set(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(good[:-7])
    with pytest.raises(cnb.ImageDataError, match=r"t10k-images-idx3-ubyte: truncated.*shape \(12, 5, 4\)"):
        cnb.load_fashion_mnist("test", data_dir=tmp_path)
    path.write_bytes(b"PK\x03\x04" + good[4:])
    with pytest.raises(cnb.ImageDataError, match=r"t10k-images-idx3-ubyte: not an idx file"):
        cnb.load_fashion_mnist("test", data_dir=tmp_path)
    path.write_bytes(gzip.compress(good)[:-20])  # a gzip stream cut short
    with pytest.raises(cnb.ImageDataError, match=r"t10k-images-idx3-ubyte: not a readable gzip file"):
        read_idx(path)
    path.write_bytes(good)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.arange(11, dtype=np.uint8)))
    with pytest.raises(cnb.ImageDataError, match="has 12 images but .* has 11 labels"):
        cnb.load_fashion_mnist("test", data_dir=tmp_path)
    labels.write_bytes(idx_bytes(np.full(12, 10, dtype=np.uint8)))
    with pytest.raises(cnb.ImageDataError, match=r"label 10 is outside 0\.\.9"):
        cnb.load_fashion_mnist("test", data_dir=tmp_path)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_the_real_fashion_mnist_from_the_debian_package():
    test = cnb.load_fashion_mnist("test")
    assert test.images.shape == (10000, 1, 28, 28) and test.source == str(FASHION_MNIST_DIR)
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10  # the published test set is balanced
    assert 0.0 <= float(test.images.min()) and float(test.images.max()) == 1.0
