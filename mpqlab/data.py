"""Fashion-MNIST, bundled with the workbook and read straight from its original IDX files.

Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; Zalando SE, MIT licence) has 60,000 training and
10,000 test images of 28x28 grey clothing items in 10 classes. The four ``.gz`` files live in
``data/fashion-mnist/``; set the ``MPQLAB_DATA`` environment variable (or pass ``root``) to read
them from elsewhere.

The splits are fixed and seeded: a validation set is carved from the training images, so the
test set is only ever used to report results. Everything is held in memory as tensors (about
200 MB as float32 at 32x32), which makes epochs on a laptop CPU fast.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from mpqlab.errors import DataFileError, UsageError

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", 60000),
    "train_labels": ("train-labels-idx1-ubyte.gz", 60000),
    "test_images": ("t10k-images-idx3-ubyte.gz", 10000),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", 10000),
}

# Mean and standard deviation of the training pixels (in [0, 1]); normalising with them
# centres the inputs, which the first conv layer's quantizer also likes.
MEAN, STD = 0.2860, 0.3530

HOW_TO_GET = (
    "The workbook ships these files in data/fashion-mnist/. If they are missing, restore them "
    "with `git checkout -- data/fashion-mnist`, or on Debian/Ubuntu `apt-get install "
    "dataset-fashion-mnist` and copy /usr/share/datasets/fashion-mnist/*.gz there, "
    "or point MPQLAB_DATA at a folder holding them."
)


def repo_data_dir() -> Path:
    """The ``data/`` folder of the checkout this package was installed from."""
    return Path(__file__).resolve().parent.parent / "data"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Folder holding the four Fashion-MNIST files: ``root``, else ``$MPQLAB_DATA``, else ``data/fashion-mnist``."""
    if root is not None:
        return Path(root)
    if os.environ.get("MPQLAB_DATA"):
        return Path(os.environ["MPQLAB_DATA"])
    return repo_data_dir() / "fashion-mnist"


def read_idx(path: Path, expected_count: int) -> np.ndarray:
    """Read one gzipped IDX file (LeCun's MNIST format): magic, dimension sizes, then uint8 data."""
    if not path.is_file():
        raise DataFileError(f"Fashion-MNIST file not found: {path}. {HOW_TO_GET}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    # A damaged stream fails in zlib (zlib.error), a bad header as gzip.BadGzipFile (an OSError),
    # a cut-off one as EOFError.
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"Fashion-MNIST file {path} is truncated or not gzip data ({err}). {HOW_TO_GET}") from None
    if len(raw) < 8 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] == 0:
        raise DataFileError(f"{path} is not an IDX file of unsigned bytes. {HOW_TO_GET}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:  # the header promises ndim sizes of 4 bytes each
        raise DataFileError(f"{path} ends inside its IDX header ({len(raw)} bytes, the header needs "
                            f"{4 + 4 * ndim} for {ndim} dimension sizes). {HOW_TO_GET}")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if dims[0] != expected_count or data.size != math.prod(dims):  # exact ints: np.prod can overflow
        raise DataFileError(
            f"{path} holds {data.size} bytes for shape {dims}; expected {expected_count} items. {HOW_TO_GET}")
    return data.reshape(dims)


@dataclass
class Splits:
    """Train / validation / test ``TensorDataset``s of normalised images (N, 1, H, W) and int64 labels."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(getattr(self, k))}" for k in ("train", "val", "test"))
        shape = tuple(self.train.tensors[0].shape[1:])
        return f"Splits({sizes}, image shape {shape})"


def _to_tensor(images: np.ndarray, pad_to_32: bool) -> torch.Tensor:
    x = torch.from_numpy(images.copy()).float().div_(255.0).sub_(MEAN).div_(STD)
    x = x.unsqueeze(1)  # (N, 1, 28, 28)
    if pad_to_32:
        # Pad with the value a black pixel takes after normalisation, so the border looks like background.
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-MEAN / STD)  # (N, 1, 32, 32)
    return x


_CACHE: dict = {}


def fashion_mnist_splits(root=None, val_size: int = 5000, seed: int = 0, pad_to_32: bool = True) -> Splits:
    """Load Fashion-MNIST as fixed, seeded splits held in memory.

    ``val_size`` training images (chosen by a permutation seeded with ``seed``) form the validation set.
    Results are cached per arguments, so notebooks can call this freely.
    """
    if not 0 <= int(val_size) < 60000:
        raise UsageError(f"val_size must be in [0, 60000), got {val_size}")
    folder = data_root(root)
    key = (str(folder.resolve()), int(val_size), int(seed), bool(pad_to_32))
    if key in _CACHE:
        return _CACHE[key]
    arrays = {name: read_idx(folder / fname, count) for name, (fname, count) in FILES.items()}
    x_train = _to_tensor(arrays["train_images"], pad_to_32)
    y_train = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    x_test = _to_tensor(arrays["test_images"], pad_to_32)
    y_test = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    splits = Splits(
        train=TensorDataset(x_train[train_idx], y_train[train_idx]),
        val=TensorDataset(x_train[val_idx], y_train[val_idx]),
        test=TensorDataset(x_test, y_test),
    )
    _CACHE[key] = splits
    return splits


def make_loaders(splits: Splits, batch_size: int = 128, seed: int = 0, eval_batch_size: int = 1000) -> dict:
    """DataLoaders over the in-memory splits; 'train' is shuffled by a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "train": DataLoader(splits.train, batch_size=batch_size, shuffle=True, generator=gen, drop_last=True),
        "val": DataLoader(splits.val, batch_size=eval_batch_size),
        "test": DataLoader(splits.test, batch_size=eval_batch_size),
    }


def calibration_batch(splits: Splits, n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training images and labels picked by a seeded permutation, for calibrating quantizers."""
    x, y = splits.train.tensors
    if not 0 < n <= len(x):
        raise UsageError(f"n must be in 1..{len(x)}, got {n}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def unnormalize(images: torch.Tensor) -> torch.Tensor:
    """Back to pixel intensities in [0, 1], for display."""
    return (images * STD + MEAN).clamp(0, 1)


def cifar10_splits(root, val_size: int = 5000, seed: int = 0) -> Splits:
    """Optional: CIFAR-10 from a local folder through torchvision (never downloaded; not used by the notebooks)."""
    import torchvision

    root = Path(root)
    try:
        train = torchvision.datasets.CIFAR10(str(root), train=True, download=False)
        test = torchvision.datasets.CIFAR10(str(root), train=False, download=False)
    except RuntimeError as err:
        raise DataFileError(f"CIFAR-10 not found under {root} ({err}); this workbook never downloads it.") from None
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)

    def to_x(ds):
        return (torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255 - mean) / std  # (N, 3, 32, 32)

    x_train, y_train = to_x(train), torch.tensor(train.targets)
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    return Splits(TensorDataset(x_train[train_idx], y_train[train_idx]),
                  TensorDataset(x_train[val_idx], y_train[val_idx]),
                  TensorDataset(to_x(test), torch.tensor(test.targets)))
