"""``--model`` and ``--weights``: build any torchvision-style classifier from a short spec; never download.

    torchvision:NAME        any classification model in ``torchvision.models`` (``resnet18``, ``mobilenet_v2``, ...)
    mpqlab:NAME             a workbook network: ``mobilenet_v1_small``, ``resnet20``, ``mobilenet_v3_small``
    package.module:factory  your own: ``factory()`` must return an ``nn.Module`` classifier

Models are built with random weights; ``--weights FILE`` loads a state dict saved with
``torch.save(model.state_dict(), FILE)``, read with ``torch.load(..., weights_only=True)`` (tensors only,
never pickled code). torchvision's pretrained weights are a download away; fetch them yourself
once and pass the file, so that runs on a cluster never depend on the internet.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import torch
from torch import nn

from mpqlab.checkpoint import load_into
from mpqlab.errors import CheckpointError, ModelSpecError, MpqlabError


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's image classifiers (``torchvision.models.list_models``, classification only)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_from_spec(spec: str, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """The model ``spec`` names, with random weights, for ``num_classes`` classes and ``in_channels`` channels.

    torchvision's classifiers always read 3 channels; ``in_channels`` applies to the workbook's models and
    to factories with an ``in_channels`` parameter, ``num_classes`` to those with a ``num_classes`` parameter
    or ``**kwargs``. ``None`` keeps a builder's default.
    """
    source, sep, name = spec.partition(":")
    if not sep or not source or not name:
        raise ModelSpecError(f"--model {spec!r} must be torchvision:NAME, mpqlab:NAME or package.module:factory")
    options = {"num_classes": num_classes, "in_channels": in_channels}
    if source == "torchvision":
        import torchvision

        known = torchvision_classifiers()
        if name not in known:
            raise ModelSpecError(f"torchvision has no classifier {name!r}; choose one of {', '.join(known)}")
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return torchvision.models.get_model(name, weights=None, **kwargs)
    if source == "mpqlab":
        from mpqlab.models import BUILDERS

        if name not in BUILDERS:
            raise ModelSpecError(f"mpqlab has no model {name!r}; choose one of {sorted(BUILDERS)}")
        factory = BUILDERS[name]
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as err:
            raise ModelSpecError(f"--model {spec!r}: cannot import module {source!r} ({err}); "
                                 "is it on PYTHONPATH?") from None
        factory = getattr(module, name, None)
        if not callable(factory):
            raise ModelSpecError(f"--model {spec!r}: module {source!r} has no callable {name!r}")
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    # num_classes also through **kwargs (torchvision's builders); in_channels only when named
    wanted = {k: v for k, v in options.items()
              if v is not None and (k in params or (k == "num_classes" and takes_kwargs))}
    model = factory(**wanted)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load the state dict in ``path`` (``weights_only=True``) into ``model``; a DDP ``module.`` prefix is dropped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged or pickled-code files
        raise CheckpointError(f"--weights {path} could not be read as a state dict of tensors "
                              f"({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"--weights {path} holds a {type(state).__name__}, not a state dict; "
                              "save it with torch.save(model.state_dict(), path)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        return load_into(model, state, source=f"--weights {path}")
    except RuntimeError as err:  # right keys, wrong shapes (e.g. 1000 ImageNet classes vs 10 here)
        if isinstance(err, MpqlabError):
            raise
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
        raise CheckpointError(f"--weights {path} does not fit the model: {first.strip()}") from None


def resolve_model(spec: str, weights=None, num_classes: int | None = None,
                  in_channels: int | None = None) -> nn.Module:
    """``build_from_spec`` then, if given, ``load_weights``; returned in eval mode on the CPU."""
    model = build_from_spec(spec, num_classes, in_channels)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def input_channels(model: nn.Module) -> int:
    """The channels the model's first conv reads (3 for torchvision's classifiers)."""
    from mpqlab.graph import layer_graph

    first = model.get_submodule(layer_graph(model).first[0])
    return first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
