"""Any image folder as training and validation data: ``DIR/train/<class>/*`` and ``DIR/val/<class>/*``.

The layout of ImageNet and of ``torchvision.datasets.ImageFolder``; the transforms are the standard
ImageNet ones (He et al. 2016; torchvision's reference scripts):

    train  RandomResizedCrop(size) -> RandomHorizontalFlip -> ToTensor -> Normalize(mean, std)
    val    Resize(size * 256 / 224) -> CenterCrop(size)    -> ToTensor -> Normalize(mean, std)

with ImageNet's channel mean and std. The folder is checked before any training starts, so a
missing split, an empty class or a class present in only one split fails at once, with the path;
an unreadable image fails when it is first read, naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpqlab.errors import DataFileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")


def _image_extensions() -> tuple:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return IMG_EXTENSIONS


def read_image(path: str):
    """The image at ``path`` as an RGB PIL image, or DataFileError naming the file (ImageFolder's loader)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataFileError(f"cannot read image {path} ({type(err).__name__}: {err}); "
                            "delete or replace it") from None


def check_image_folder(root) -> list[str]:
    """The class names of ``root``; DataFileError for a missing split, an empty class, or classes that differ."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(f"--data {root}: no such folder; expected {root}/train/<class>/* and {root}/val/<class>/*")
    extensions = _image_extensions()
    classes = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise DataFileError(f"--data {root}: split folder {folder} is missing; "
                                f"expected {root}/train/<class>/* and {root}/val/<class>/*")
        names = sorted(d.name for d in folder.iterdir() if d.is_dir())
        if not names:
            raise DataFileError(f"{folder} has no class folders; put each class's images in {folder}/<class>/")
        for name in names:
            if not any(f.is_file() and f.name.lower().endswith(extensions) for f in (folder / name).rglob("*")):
                raise DataFileError(f"class folder {folder / name} holds no image "
                                    f"(looked for {', '.join(extensions)})")
        classes[split] = names
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise DataFileError(f"--data {root}: train and val must have the same classes; "
                            f"only in train: {only_train}, only in val: {only_val}")
    return classes["train"]


@dataclass
class ImageFolderData:
    train: object  # torchvision.datasets.ImageFolder with training transforms
    val: object  # with evaluation transforms
    classes: list
    image_size: int


def imagenet_transforms(image_size: int, train: bool):
    """torchvision's standard ImageNet preprocessing at ``image_size`` pixels (see the module docstring)."""
    from torchvision import transforms as T

    if train:
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folder_data(root, image_size: int = 224) -> ImageFolderData:
    """Checked ``ImageFolder`` datasets for ``root/train`` and ``root/val`` at ``image_size`` pixels."""
    from torchvision.datasets import ImageFolder

    if not isinstance(image_size, int) or image_size < 8:
        raise DataFileError(f"--image-size must be an integer of at least 8 pixels, got {image_size!r}")
    classes = check_image_folder(root)
    root = Path(root)
    train = ImageFolder(str(root / "train"), imagenet_transforms(image_size, True), loader=read_image)
    val = ImageFolder(str(root / "val"), imagenet_transforms(image_size, False), loader=read_image)
    return ImageFolderData(train, val, classes, image_size)


def synthetic_image_folder(root, classes: int = 3, train_per_class: int = 16, val_per_class: int = 4,
                           size: int = 16, seed: int = 0) -> Path:
    """Write a tiny image folder of PNGs to try the commands and test them: class c is noise plus a bright square.

    ``root/train/class<c>/<i>.png`` and ``root/val/class<c>/<i>.png``; returns ``root``.
    """
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 128, (size, size, 3), dtype=np.uint8)  # (H, W, RGB)
                corner = (c * size // max(classes, 1)) % max(size - 4, 1)
                pixels[corner:corner + 4, corner:corner + 4] = 255  # where the square sits says the class
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
