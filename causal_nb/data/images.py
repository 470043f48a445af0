"""Image classification data: the idx files of Fashion-MNIST (and MNIST), read offline.

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017; 70,000 28x28 grey images of 10 clothing classes,
MIT licence) ships as four gzip-compressed idx files (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``).
Two routes put them on a machine:

- Debian/Ubuntu: ``sudo apt-get install dataset-fashion-mnist`` writes them to
  ``/usr/share/datasets/fashion-mnist/`` (``FASHION_MNIST_DIR``, the default; ``make install``
  tries it where apt is available);
- anywhere: download the four files (https://github.com/zalandoresearch/fashion-mnist, or
  MNIST's, which have the same names and format) into a folder and pass ``data_dir=``.

The idx format (LeCun's): a big-endian magic ``0x0000 <type> <n_dims>``, ``n_dims`` big-endian
uint32 sizes, then the data; both images (type ``0x08``, uint8, 3 dims) and labels (uint8, 1
dim) are read with numpy and checked (magic, dims, length, label range) so a truncated or
foreign file is named with what is wrong. Files may be gzip-compressed or not.

Splits: ``"test"`` is the 10,000 t10k images; the 60,000 training images are split once, by a
seeded permutation, into ``"val"`` (``val_size`` images, default 5,000) and ``"train"`` (the
rest), so model selection never looks at the test split.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "IDX_FILES", "ImageDataError", "ImageSet",
           "load_fashion_mnist", "read_idx"]

#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: The ten Fashion-MNIST classes, by label.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")

#: split file stem -> (images file, labels file), without the optional ``.gz``.
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

SPLITS = ("train", "val", "test")

# idx type byte -> numpy big-endian dtype
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class ImageDataError(ValueError):
    """An image data file that is missing or does not fit its format (the message names the file)."""


@dataclass(frozen=True)
class ImageSet:
    """Labelled images, ready for ``cnb.ImageClassificationTask(images, labels)``.

    Attributes:
        images: float32 [n, 1, height, width], pixel values scaled to [0, 1].
        labels: int64 [n], class indices 0..len(classes)-1.
        classes: the class names, by label.
        split: ``"train"``, ``"val"`` or ``"test"``.
        source: the folder the files came from.
        indices: each image's index in its idx file (train and val index the training file).
    """

    images: Float[Tensor, "n channel height width"]
    labels: Int[Tensor, " n"]
    classes: tuple[str, ...]
    split: str
    source: str
    indices: Int[Tensor, " n"]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def head(self, n: int) -> ImageSet:
        """The first ``n`` images (a deterministic subset for quick runs)."""
        return ImageSet(self.images[:n], self.labels[:n], self.classes, self.split, self.source, self.indices[:n])


def read_idx(path) -> np.ndarray:
    """Read one idx file (gzip-compressed or not) into a numpy array of its dtype and shape.

    Raises:
        ImageDataError: the file is missing, not idx (bad magic or type), or truncated/too long
            for the sizes its header states (the message names the file and the problem).
    """
    path = Path(path)
    if not path.exists():
        raise ImageDataError(f"{path} does not exist")
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        if gz:
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:  # a gzip stream cut short
        raise ImageDataError(f"{path}: not a readable gzip file ({e}); the file is damaged or truncated: download "
                             "it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise ImageDataError(f"{path}: not an idx file (its first 4 bytes {raw[:4].hex() or 'are missing'} are not "
                             "the idx magic 0000 <type 08..0e> <n_dims>)")
    dtype, n_dims = _IDX_TYPES[raw[2]], raw[3]
    head = 4 + 4 * n_dims
    if len(raw) < head:
        raise ImageDataError(f"{path}: truncated idx header ({len(raw)} bytes, the header needs {head})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=n_dims, offset=4))
    want = head + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != want:
        what = "truncated" if len(raw) < want else "longer than its header says"
        raise ImageDataError(f"{path}: {what}: the header states shape {shape} ({want} bytes in all), the file has "
                             f"{len(raw)} bytes; download it again")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    return None


def _missing_message(folder: Path, missing: list[str], given: bool) -> str:
    where = f"data_dir={str(folder)!r}" if given else f"the default folder {folder}"
    return (f"Fashion-MNIST not found: {where} lacks {', '.join(missing)}. Either install Debian's package "
            "(sudo apt-get install dataset-fashion-mnist, which writes /usr/share/datasets/fashion-mnist/), or "
            "download the four idx files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; from "
            "https://github.com/zalandoresearch/fashion-mnist, or MNIST's) into a folder and pass "
            "data_dir='/path/to/folder'")


def _read_pair(folder: Path, file_split: str, given: bool, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    stems = IDX_FILES[file_split]
    paths = [_find(folder, s) for s in stems]
    missing = [s + ".gz" for s, p in zip(stems, paths) if p is None]
    if missing:
        raise ImageDataError(_missing_message(folder, missing, given))
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ImageDataError(f"{paths[0]}: expected uint8 images of 3 dims [n, height, width], got {images.dtype} of "
                             f"shape {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ImageDataError(f"{paths[1]}: expected uint8 labels of 1 dim [n], got {labels.dtype} of shape "
                             f"{labels.shape}")
    if len(images) != len(labels):
        raise ImageDataError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels; the two "
                             "files of a split must match (download them again)")
    if len(labels) and int(labels.max()) >= n_classes:
        raise ImageDataError(f"{paths[1]}: label {int(labels.max())} is outside 0..{n_classes - 1} (the class "
                             "names given); pass class_names= for this data set")
    return images, labels


def load_fashion_mnist(split: str = "train", data_dir=None, val_size: int = 5000, seed: int = 0,
                       class_names=FASHION_MNIST_CLASSES) -> ImageSet:
    """Fashion-MNIST (or any idx data set with its file names, such as MNIST) as an ``ImageSet``.

    Args:
        split: ``"train"`` (training images minus the validation ones), ``"val"`` (``val_size``
            training images held out by a seeded permutation) or ``"test"`` (the t10k files).
        data_dir: the folder with the idx files (``.gz`` or not); default ``$CAUSAL_NB_FASHION_MNIST``
            or ``FASHION_MNIST_DIR`` (Debian's ``dataset-fashion-mnist``).
        val_size: training images held out as ``"val"`` (0: none; then ``"val"`` is an error).
        seed: the permutation's seed (the same seed always gives the same split).
        class_names: the names of the labels (default Fashion-MNIST's; MNIST: ``[str(d) for d in range(10)]``).

    Raises:
        ImageDataError: files missing (the message names both routes: the apt package and
            ``data_dir=``), malformed (names the file and the problem) or labels beyond ``class_names``.
        ValueError: an unknown split or a ``val_size`` outside 0..n_train-1.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)} (val is held out of train, test is t10k)")
    given = data_dir is not None
    env = os.environ.get("CAUSAL_NB_FASHION_MNIST")
    folder = Path(data_dir if given else env or FASHION_MNIST_DIR).expanduser()
    given = given or bool(env)
    if given and not folder.is_dir():
        raise ImageDataError(f"data_dir {str(folder)!r} is not a folder. " + _missing_message(folder, ["the idx files"],
                                                                                              True))
    classes = tuple(str(c) for c in class_names)
    images, labels = _read_pair(folder, "test" if split == "test" else "train", given, len(classes))
    index = np.arange(len(labels))
    if split != "test":
        if not 0 <= int(val_size) < len(labels):
            raise ValueError(f"val_size={val_size} must lie in 0..{len(labels) - 1} (the training file has "
                             f"{len(labels)} images)")
        if split == "val" and int(val_size) == 0:
            raise ValueError("split='val' with val_size=0: no images are held out; pass val_size > 0")
        perm = np.random.default_rng(seed).permutation(len(labels))
        index = np.sort(perm[: int(val_size)] if split == "val" else perm[int(val_size):])
    x = torch.from_numpy(images[index].astype(np.float32) / 255.0).unsqueeze(1)
    return ImageSet(x, torch.from_numpy(labels[index].astype(np.int64)), classes, split, str(folder),
                    torch.from_numpy(index.astype(np.int64)))
