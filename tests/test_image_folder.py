"""--data DIR: ImageFolder splits with ImageNet transforms, and clear errors for broken folders."""

import pytest
import torch

from mpqlab.errors import DataFileError
from mpqlab.image_folder import check_image_folder, image_folder_data, synthetic_image_folder


def test_synthetic_folder_loads_with_imagenet_transforms(tmp_path):
    root = synthetic_image_folder(tmp_path / "data", classes=3, train_per_class=5, val_per_class=2, size=12)
    data = image_folder_data(root, image_size=8)
    assert data.classes == ["class0", "class1", "class2"] and len(data.train) == 15 and len(data.val) == 6
    image, label = data.val[5]
    assert image.shape == (3, 8, 8) and label == 2 and image.dtype == torch.float32
    assert image.min() < 0  # normalised with ImageNet's mean and std


def test_missing_split_is_named(tmp_path):
    root = synthetic_image_folder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    for f in (root / "val").rglob("*.png"):
        f.unlink()
    for d in sorted((root / "val").iterdir()):
        d.rmdir()
    (root / "val").rmdir()
    with pytest.raises(DataFileError, match=r"split folder .*val is missing"):
        check_image_folder(root)
    with pytest.raises(DataFileError, match="no such folder"):
        check_image_folder(tmp_path / "nowhere")


def test_empty_class_and_mismatched_classes_are_named(tmp_path):
    root = synthetic_image_folder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataFileError, match=r"class folder .*train/empty holds no image"):
        check_image_folder(root)
    (root / "train" / "empty" / "notes.txt").unlink()
    (root / "train" / "empty").rmdir()
    (root / "val" / "extra").mkdir()
    synthetic_image_folder(tmp_path / "other", classes=1, train_per_class=1, val_per_class=1)
    (tmp_path / "other" / "val" / "class0" / "0.png").rename(root / "val" / "extra" / "0.png")
    with pytest.raises(DataFileError, match=r"only in val: \['extra'\]"):
        check_image_folder(root)


def test_unreadable_image_names_the_file(tmp_path):
    root = synthetic_image_folder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    bad = root / "train" / "class1" / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    data = image_folder_data(root, image_size=8)
    index = data.train.samples.index((str(bad), 1))
    with pytest.raises(DataFileError, match="cannot read image .*broken.png"):
        data.train[index]


def test_bad_image_size(tmp_path):
    root = synthetic_image_folder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    with pytest.raises(DataFileError, match="--image-size"):
        image_folder_data(root, image_size=4)
