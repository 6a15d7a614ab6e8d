"""Post-training quantization: calibrate() and ptq_table() on a tiny hand-built model and synthetic data."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mpqlab.data import Splits
from mpqlab.errors import QuantParamError, TensorValueError
from mpqlab.quant.policy import quantize_model, uniform_policy
from mpqlab.quant.ptq import ACT_OBSERVERS, calibrate, ptq_table, static_quantizers


def toy_splits(n=600):
    """Images (N, 1, 4, 4); the label says whether pixel (0, 0) is positive."""
    x = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0, 0, 0] > 0).long()
    data = TensorDataset(x, y)
    return Splits(train=data, val=data, test=data)


def toy_model():
    """A 1x1 conv that copies the image, then a linear layer reading pixel (0, 0): float accuracy is exactly 1."""
    conv = nn.Conv2d(1, 1, 1)
    linear = nn.Linear(16, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
        linear.weight.zero_()
        linear.weight[0, 0], linear.weight[1, 0] = -1.0, 1.0
        linear.bias.zero_()
    return nn.Sequential(conv, nn.Flatten(), linear)


def test_calibrate_freezes_static_quantizers_and_restores_mode():
    model = toy_model()
    qmodel = quantize_model(model, uniform_policy(model, 8, 8)).train()
    images = toy_splits().train.tensors[0]
    calibrate(qmodel, images, batch_size=100)
    quantizers = static_quantizers(qmodel)
    assert len(quantizers) == 2 and all(not q.calibrating for q in quantizers)
    assert qmodel.training
    assert qmodel[0].a_quantizer.observer.min_val.item() < 0  # it saw the data
    with pytest.raises(TensorValueError, match="empty"):
        calibrate(qmodel, images[:0])
    with pytest.raises(QuantParamError, match="batch_size"):
        calibrate(qmodel, images, batch_size=0)


def test_ptq_table():
    splits = toy_splits()
    methods = list(ACT_OBSERVERS)
    table = ptq_table(toy_model, splits, bits_list=(8, 2), methods=methods, calib_size=200, first_last_bits=None)
    assert list(table.columns) == ["method", "w_bits", "a_bits", "accuracy"]
    assert len(table) == 1 + 2 * len(methods)
    assert table.iloc[0].tolist() == ["float", 32, 32, 1.0]
    eight = table[table.w_bits == 8]
    assert (eight.accuracy >= 0.97).all()  # 8-bit PTQ of this model loses almost nothing
    assert table.accuracy.between(0, 1).all()
    with pytest.raises(QuantParamError, match="unknown calibration method"):
        ptq_table(toy_model(), splits, methods=["minmaxx"])
