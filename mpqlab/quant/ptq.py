"""Post-training quantization (PTQ): quantize a trained model and calibrate it on a few hundred images, no retraining.

Calibration runs the model in eval mode over unlabeled training images so every static activation
quantizer's observer sees realistic data, then freezes the ranges. The choice of observer (min-max,
percentile, MSE, KL) is the whole difference between PTQ methods here; weights always use
per-channel symmetric min-max (the default weight quantizer), which is already close to lossless at 8 bits.

References: Gholami et al. 2021, Sec. IV-C (PTQ); Wu et al. 2020, "Integer Quantization for Deep Learning
Inference: Principles and Empirical Evaluation", Sec. 4 (calibration). Introduced in notebook 01.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mpqlab.errors import QuantParamError, check_tensor
from mpqlab.quant.kl import KLObserver
from mpqlab.quant.observers import EMAMinMaxObserver, MinMaxObserver, MSEObserver, PercentileObserver
from mpqlab.quant.policy import quantize_model, uniform_policy
from mpqlab.quant.uniform import UniformQuantizer, default_weight_quantizer

# Activation observers by name; each is built as (bits) -> asymmetric, unsigned, per-tensor.
ACT_OBSERVERS = {
    "minmax": MinMaxObserver,
    "ema": EMAMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver,
}


def act_quantizer_factory(method: str):
    """Factory ``(bits, name, layer) -> UniformQuantizer`` for static activation quantizers of ``method``."""
    if method not in ACT_OBSERVERS:
        raise QuantParamError(f"unknown calibration method {method!r}; choose from {sorted(ACT_OBSERVERS)}")
    observer_cls = ACT_OBSERVERS[method]

    def factory(bits: int, name: str, layer: nn.Module) -> UniformQuantizer:
        return UniformQuantizer(observer_cls(bits, symmetric=False, signed=False), mode="static")

    return factory


def static_quantizers(model: nn.Module) -> list[UniformQuantizer]:
    """The model's static ``UniformQuantizer``s (the ones calibration freezes)."""
    return [m for m in model.modules() if isinstance(m, UniformQuantizer) and m.mode == "static"]


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> nn.Module:
    """Reset every static quantizer, run ``images`` through the model in eval mode, then freeze them.

    Returns the same model (calibrated in place); its train/eval mode is restored afterwards.
    """
    check_tensor(images, name="images")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise QuantParamError(f"batch_size must be a positive integer, got {batch_size!r}")
    quantizers = static_quantizers(model)
    for q in quantizers:
        q.unfreeze()
    was_training = model.training
    model.eval().to(device)
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size].to(device))  # (B, C, H, W)
    for q in quantizers:
        q.freeze()
    model.train(was_training)
    return model


def ptq_accuracy(model: nn.Module, bits: int, act_quantizer, images: torch.Tensor, test_loader,
                 first_last_bits: int | None = 8, device: str = "cpu") -> float:
    """Test accuracy of ``model`` quantized at W{bits}A{bits} (a copy; ``model`` is unchanged) with activation
    quantizers from ``act_quantizer`` (e.g. ``act_quantizer_factory("kl")``), calibrated on ``images``."""
    from mpqlab.train import evaluate

    policy = uniform_policy(model, bits, bits, first_last_bits=first_last_bits)
    qmodel = quantize_model(model, policy, weight_quantizer=default_weight_quantizer, act_quantizer=act_quantizer)
    calibrate(qmodel, images, device=device)
    return evaluate(qmodel, test_loader, device)


def ptq_table(model_or_fn: nn.Module | Callable[[], nn.Module], splits, bits_list=(8, 6, 4),
              methods=("minmax", "percentile", "mse", "kl"), calib_size: int = 512,
              first_last_bits: int | None = 8, seed: int = 0, device: str = "cpu") -> pd.DataFrame:
    """Test accuracy of the float model and of W{b}A{b} PTQ for every bit-width ``b`` and calibration method.

    ``model_or_fn`` is a trained model (quantized copies are made; its weights never change) or a function returning a fresh one.
    ``first_last_bits`` keeps the first and last layers at that bit-width (None: like the rest).
    Returns a long table with columns ``method, w_bits, a_bits, accuracy``; the float row has bits 32.
    ``df.pivot(index="method", columns="w_bits", values="accuracy")`` gives the usual grid.
    """
    from mpqlab.data import calibration_batch, make_loaders
    from mpqlab.train import evaluate

    def fresh_model() -> nn.Module:
        return model_or_fn if isinstance(model_or_fn, nn.Module) else model_or_fn()

    for method in methods:
        act_quantizer_factory(method)  # fail on a typo before any evaluation
    images, _ = calibration_batch(splits, n=calib_size, seed=seed)
    test_loader = make_loaders(splits, seed=seed)["test"]
    rows = [{"method": "float", "w_bits": 32, "a_bits": 32,
             "accuracy": evaluate(fresh_model(), test_loader, device)}]
    for method in tqdm(methods, desc="PTQ methods"):
        for bits in bits_list:
            accuracy = ptq_accuracy(fresh_model(), bits, act_quantizer_factory(method), images, test_loader,
                                    first_last_bits, device)
            rows.append({"method": method, "w_bits": bits, "a_bits": bits, "accuracy": accuracy})
    return pd.DataFrame(rows)
