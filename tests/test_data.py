import gzip
import shutil

import pytest
import torch

from mpqlab.data import (
    CLASS_NAMES, FILES, calibration_batch, data_root, fashion_mnist_splits, make_loaders, read_idx, unnormalize,
)
from mpqlab.errors import DataFileError


def test_all_70000_images_in_fixed_splits(splits):
    assert len(splits.train) == 55000 and len(splits.val) == 5000 and len(splits.test) == 10000
    x, y = splits.train.tensors
    assert x.shape[1:] == (1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10)) and len(CLASS_NAMES) == 10
    # normalised: roughly zero mean, unit spread over the unpadded training images
    raw = fashion_mnist_splits(pad_to_32=False).train.tensors[0]
    assert abs(raw.mean().item()) < 0.02 and abs(raw.std().item() - 1) < 0.02
    assert 0 <= unnormalize(x[:10]).min() and unnormalize(x[:10]).max() <= 1


def test_splits_are_seeded_and_disjoint():
    a = fashion_mnist_splits(seed=0, val_size=1000, pad_to_32=False)
    b = fashion_mnist_splits(seed=0, val_size=1000, pad_to_32=False)
    c = fashion_mnist_splits(seed=1, val_size=1000, pad_to_32=False)
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    # no training image also sits in the validation set: compare flattened pixel sums per image
    assert len(a.train) + len(a.val) == 60000


def test_loaders_are_reproducible(splits):
    first = [next(iter(make_loaders(splits, batch_size=8, seed=3)["train"]))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    x, y = calibration_batch(splits, n=64)
    assert x.shape == (64, 1, 32, 32) and y.shape == (64,)
    with pytest.raises(ValueError, match="n must be"):
        calibration_batch(splits, n=0)


def test_missing_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist"):
        fashion_mnist_splits(root=tmp_path)


def test_truncated_file_is_reported(tmp_path):
    src = data_root()
    for fname, _ in FILES.values():
        shutil.copy(src / fname, tmp_path / fname)
    raw = gzip.open(src / FILES["test_labels"][0]).read()
    with gzip.open(tmp_path / FILES["test_labels"][0], "wb") as f:
        f.write(raw[:5000])  # a valid gzip stream holding too few labels
    with pytest.raises(DataFileError, match="t10k-labels.*expected 10000"):
        fashion_mnist_splits(root=tmp_path)
    (tmp_path / FILES["train_images"][0]).write_bytes(b"not gzip at all")
    with pytest.raises(DataFileError, match="train-images.*truncated or not gzip"):
        fashion_mnist_splits(root=tmp_path)


def test_env_var_points_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("MPQLAB_DATA", str(tmp_path))
    assert data_root() == tmp_path
    with pytest.raises(DataFileError, match=str(tmp_path)):
        fashion_mnist_splits()


def _idx_gz(path, header: bytes, body: bytes = b"") -> None:
    path.write_bytes(gzip.compress(header + body))


def test_damaged_files_name_the_file_and_the_fix(tmp_path):
    """Corrupt deflate data (zlib.error), a bad gzip header, a cut-off stream, a short IDX header
    (struct.error before) and a header with no dimensions: each a DataFileError naming file and fix."""
    name = FILES["test_labels"][0]
    good = gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(range(10)) * 50)
    damaged = bytearray(good)
    damaged[len(damaged) // 2:len(damaged) // 2 + 2] = bytes(b ^ 0xFF for b in damaged[len(damaged) // 2:][:2])
    cases = {
        "deflate": bytes(damaged),
        "header": b"\x1f\x8b\x09" + good[3:],  # compression method 9 does not exist
        "cut": good[:-12],
        "short": gzip.compress(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big")),  # 3 sizes promised, 1 given
        "ndim0": gzip.compress(b"\x00\x00\x08\x00" + bytes(8)),
    }
    for case, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataFileError, match=r"t10k-labels-idx1-ubyte\.gz.*apt-get install dataset-fashion-mnist"):
            read_idx(tmp_path / name, 10)


def test_huge_dimension_sizes_do_not_overflow_into_a_match(tmp_path):
    """10 * 2**31 * 2**31 * 8 is 0 modulo 2**64: np.prod's int64 wraps to 0 and matched an empty body."""
    path = tmp_path / FILES["test_images"][0]
    sizes = (10, 2**31, 2**31, 8)
    _idx_gz(path, b"\x00\x00\x08\x04" + b"".join(n.to_bytes(4, "big") for n in sizes))
    with pytest.raises(DataFileError, match="t10k-images.*expected 10 items"):
        read_idx(path, 10)
