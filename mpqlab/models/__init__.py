"""The networks of the workbook: MobileNetV1 (full-size and a small Fashion-MNIST configuration) and ResNet-20."""

from mpqlab.models.mobilenet import MobileNetV1, mobilenet_v1, mobilenet_v1_small
from mpqlab.models.resnet import ResNet20, resnet20

__all__ = ["MobileNetV1", "mobilenet_v1", "mobilenet_v1_small", "ResNet20", "resnet20", "build_model"]

BUILDERS = {"mobilenet_v1_small": mobilenet_v1_small, "resnet20": resnet20}


def build_model(name: str):
    """Build a shipped architecture by its checkpoint name ('mobilenet_v1_small' or 'resnet20')."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[name]()
