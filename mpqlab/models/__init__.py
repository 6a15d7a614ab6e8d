"""The networks of the workbook: MobileNetV1 (full-size and a small Fashion-MNIST configuration), ResNet-20
and a small MobileNetV3-style network (notebook 07)."""

from mpqlab.models.mobilenet import MobileNetV1, mobilenet_v1, mobilenet_v1_small
from mpqlab.models.mobilenet_v3 import MobileNetV3Small, mobilenet_v3_small_fmnist
from mpqlab.models.resnet import ResNet20, resnet20
from mpqlab.errors import ModelSpecError

__all__ = ["MobileNetV1", "mobilenet_v1", "mobilenet_v1_small", "ResNet20", "resnet20",
           "MobileNetV3Small", "mobilenet_v3_small_fmnist", "build_model"]

BUILDERS = {"mobilenet_v1_small": mobilenet_v1_small, "resnet20": resnet20,
            "mobilenet_v3_small": mobilenet_v3_small_fmnist}


def build_model(name: str):
    """Build a shipped architecture by its checkpoint name ('mobilenet_v1_small', 'resnet20' or 'mobilenet_v3_small')."""
    if name not in BUILDERS:
        raise ModelSpecError(f"unknown model {name!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[name]()
