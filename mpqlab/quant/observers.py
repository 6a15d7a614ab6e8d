"""Observers: watch tensors, keep statistics, and turn them into ``(scale, zero_point)``.

Measuring is separate from mapping: an observer never changes a tensor (``forward`` returns its
input); ``UniformQuantizer`` applies what ``compute_qparams()`` returns. Observers take the same
tensors as quantizers (see ``mpqlab/quant/quantizer.py``): floating point, finite, non-empty; float16
and bfloat16 statistics are kept in float32. The observers differ only
in how they choose the clipping range ``[x_min, x_max]`` handed to ``qparams_from_range``:

- ``MinMaxObserver``: the extremes seen since ``reset()``. Nothing is clipped, so one outlier
  stretches the grid for everyone.
- ``EMAMinMaxObserver``: an exponential moving average of each batch's extremes (Jacob et al. 2018, Sec. 3).
- ``PercentileObserver``: the (100 - p)-th and p-th percentiles; the rarest values are clipped.
- ``MSEObserver``: shrinks the min-max range by the ratio that minimises the mean squared
  quantization error, trading clipping error against rounding error.
- ``KLObserver`` (in ``kl.py``): TensorRT's entropy calibration.

Percentile, MSE and KL calibration are compared in Wu et al. 2020, "Integer Quantization for Deep
Learning Inference: Principles and Empirical Evaluation", Sec. 4; see also Gholami et al. 2021,
Sec. III-B. Introduced in notebook 01.
"""

from __future__ import annotations

import torch
from torch import nn

from mpqlab.errors import QuantParamError, check_bits, check_fraction, check_int, check_tensor
from mpqlab.quant.quantizer import check_quantizer_input, to_compute_dtype
from mpqlab.quant.uniform import checks_enabled, fake_quantize, qparams_from_range, quant_range


def channel_rows(x: torch.Tensor, ch_axis: int | None) -> torch.Tensor:
    """View ``x`` as rows, one per channel: (C, N) for per-channel, (1, N) for per-tensor."""
    if ch_axis is None:
        return x.reshape(1, -1)
    if not (isinstance(ch_axis, int) and -x.dim() <= ch_axis < x.dim()):
        raise QuantParamError(f"ch_axis must be an int in [{-x.dim()}, {x.dim() - 1}] for a tensor of shape "
                              f"{tuple(x.shape)}, got {ch_axis!r}")
    return x.movedim(ch_axis, 0).reshape(x.shape[ch_axis], -1)


class Observer(nn.Module):
    """Base class: holds the target grid (``bits``, ``symmetric``, ``signed``, ``narrow``, ``ch_axis``)."""

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False, narrow: bool = False,
                 ch_axis: int | None = None):
        super().__init__()
        self.bits = check_bits(bits)
        self.symmetric, self.signed, self.narrow, self.ch_axis = symmetric, signed, narrow, ch_axis
        quant_range(self.bits, signed, narrow)  # fail now, not at the first batch, on an impossible grid

    @property
    def q_min(self) -> int:
        return quant_range(self.bits, self.signed, self.narrow)[0]

    @property
    def q_max(self) -> int:
        return quant_range(self.bits, self.signed, self.narrow)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if checks_enabled():  # skipped only while torch.compile traces (see uniform.checks_enabled)
            check_quantizer_input(x, name=f"the input of {type(self).__name__}")
        with torch.no_grad():
            self.observe(channel_rows(to_compute_dtype(x.detach()), self.ch_axis))  # (C, N)
        return x

    def observe(self, rows: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def qparams_for_range(self, x_min: torch.Tensor, x_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``qparams_from_range`` on this observer's grid; shape () per-tensor, (C,) per-channel."""
        scale, zero_point = qparams_from_range(x_min, x_max, self.bits, self.symmetric, self.signed, self.narrow)
        if self.ch_axis is None:
            return scale.reshape(()), zero_point.reshape(())
        return scale, zero_point

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        sign = "signed" if self.signed else "unsigned"
        where = "per-tensor" if self.ch_axis is None else f"per-channel (ch_axis={self.ch_axis})"
        return f"bits={self.bits}, {kind}, {sign}{', narrow' if self.narrow else ''}, {where}"


class MinMaxObserver(Observer):
    """``x_min = min(x)``, ``x_max = max(x)`` over everything seen since ``reset()`` (per channel)."""

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False, narrow: bool = False,
                 ch_axis: int | None = None):
        super().__init__(bits, symmetric, signed, narrow, ch_axis)
        # Statistics are transient calibration state, so not saved in the state dict.
        self.register_buffer("min_val", None, persistent=False)  # (C,) once data is seen
        self.register_buffer("max_val", None, persistent=False)

    def reset(self) -> None:
        self.min_val, self.max_val = None, None

    def _batch_min_max(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is not None and rows.shape[0] != self.min_val.shape[0]:
            raise QuantParamError(f"this observer has seen {self.min_val.shape[0]} channels and now got "
                                  f"{rows.shape[0]}; call reset() before observing a different tensor")
        return torch.aminmax(rows, dim=1)

    def observe(self, rows: torch.Tensor) -> None:
        lo, hi = self._batch_min_max(rows)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)

    def _check_seen(self) -> None:
        if self.min_val is None:
            raise QuantParamError(f"{type(self).__name__} has seen no data yet: pass tensors through it "
                                  "(e.g. calibrate the model) before asking for qparams")

    def compute_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_seen()
        return self.qparams_for_range(self.min_val, self.max_val)


class EMAMinMaxObserver(MinMaxObserver):
    """Running extremes: ``x_min <- x_min + momentum * (min(batch) - x_min)`` (same for ``x_max``).

    The first batch sets the range; ``momentum`` weighs each new batch (larger = forgets faster).
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False, narrow: bool = False,
                 ch_axis: int | None = None, momentum: float = 0.1):
        super().__init__(bits, symmetric, signed, narrow, ch_axis)
        self.momentum = check_fraction(momentum, name="momentum", low=0.0, high=1.0, high_inclusive=True)

    def observe(self, rows: torch.Tensor) -> None:
        lo, hi = self._batch_min_max(rows)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = self.min_val + self.momentum * (lo - self.min_val)
            self.max_val = self.max_val + self.momentum * (hi - self.max_val)


class SampleObserver(MinMaxObserver):
    """Min-max plus a seeded random sample of at most ``max_samples`` values per channel per batch.

    Percentile and MSE calibration need the distribution, not just the extremes; a sample keeps
    memory bounded while the exact extremes are still tracked.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False, narrow: bool = False,
                 ch_axis: int | None = None, max_samples: int = 2**16, seed: int = 0):
        super().__init__(bits, symmetric, signed, narrow, ch_axis)
        self.max_samples, self.seed = check_int(max_samples, name="max_samples", low=1), seed
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.samples: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(self.seed)

    def observe(self, rows: torch.Tensor) -> None:
        super().observe(rows)
        if rows.shape[1] > self.max_samples:
            idx = torch.randint(rows.shape[1], (self.max_samples,), generator=self.generator)
            rows = rows[:, idx.to(rows.device)]
        self.samples.append(rows.float())

    def all_samples(self) -> torch.Tensor:
        self._check_seen()
        return torch.cat(self.samples, dim=1)  # (C, N)


class PercentileObserver(SampleObserver):
    """``x_min``, ``x_max`` = the (100 - p)-th and p-th percentiles of the sample (nearest rank)."""

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False, narrow: bool = False,
                 ch_axis: int | None = None, percentile: float = 99.99, max_samples: int = 2**16, seed: int = 0):
        super().__init__(bits, symmetric, signed, narrow, ch_axis, max_samples, seed)
        self.percentile = check_fraction(percentile, name="percentile", low=50.0, high=100.0, high_inclusive=True)

    def compute_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.all_samples()  # (C, N)
        n = rows.shape[1]
        k_hi = round(self.percentile / 100 * (n - 1)) + 1  # kthvalue counts from 1
        lo = torch.kthvalue(rows, n + 1 - k_hi, dim=1).values
        hi = torch.kthvalue(rows, k_hi, dim=1).values
        return self.qparams_for_range(lo, hi)


def clipping_mse_curve(x: torch.Tensor, bits: int, symmetric: bool = False, signed: bool = False,
                       narrow: bool = False, ch_axis: int | None = None,
                       num_candidates: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error of fake-quantizing ``x`` with its min-max range shrunk by each ratio r.

        MSE(r) = mean((Q(x; r * x_min, r * x_max) - x)^2),   r = 1/K, 2/K, ..., 1

    Returns ``(ratios, mse)`` of shapes (K,) and (K, C) (C = 1 per-tensor). Small r clips a lot;
    r = 1 is plain min-max. Plotted in notebook 01. (Data above ~1e19 has errors above float32's
    range: those entries are inf, though the argmin is still computed without overflow.)
    """
    check_tensor(x)
    rows = channel_rows(x.detach().float(), ch_axis)  # (C, N)
    x_min, x_max = torch.aminmax(rows, dim=1)
    ratios, mse, unit = _clipping_mse(rows, x_min, x_max, bits, symmetric, signed, narrow, num_candidates)
    return ratios, mse * unit * unit  # (not unit**2, which overflows to inf and makes 0 * inf = NaN)


MSE_CHUNK_ELEMENTS = 2**22  # candidates are scored together in chunks of about this many values (16 MB)


def power_of_two_unit(x_min: torch.Tensor, x_max: torch.Tensor) -> torch.Tensor:
    """Per channel, the power of two ``2^e`` with ``max(|x_min|, |x_max|) / 2^e`` in [0.5, 1) (1 if all zero)."""
    _, exponent = torch.frexp(torch.maximum(x_min.abs(), x_max.abs()).float())  # frexp(0) = (0, 0)
    return torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent)


def _clipping_mse(rows, x_min, x_max, bits, symmetric, signed, narrow, num_candidates):
    """``clipping_mse_curve`` on rows (C, N) with the full range ``[x_min, x_max]`` (C,) given: ``(ratios, mse, unit)``.

    The MSE is measured in units of ``unit`` (C,), a power of two near each channel's max|x|: the squared
    errors of data near 1e30 would overflow float32 and those near 1e-30 underflow to 0 (then every ratio
    looks perfect). Dividing by a power of two only changes exponents, so in the normal range the
    result is bit for bit ``mse / unit^2``.
    """
    num_candidates = check_int(num_candidates, name="num_candidates", low=1)
    q_min, q_max = quant_range(bits, signed, narrow)
    unit = power_of_two_unit(x_min, x_max)  # (C,)
    rows, x_min, x_max = rows / unit[:, None], x_min / unit, x_max / unit
    ratios = torch.linspace(1.0 / num_candidates, 1.0, num_candidates, device=rows.device)
    mse = torch.empty(num_candidates, rows.shape[0], device=rows.device)
    channels, n = rows.shape
    chunk = max(1, MSE_CHUNK_ELEMENTS // rows.numel())
    # Several candidates per fake_quantize call: one Python round trip per chunk instead of one per
    # candidate (calibrating a network calls this for every quantizer), with the same arithmetic.
    for start in range(0, num_candidates, chunk):
        r = ratios[start:start + chunk, None]  # (k, 1)
        k = r.shape[0]
        scale, zero_point = qparams_from_range(r * x_min, r * x_max, bits, symmetric, signed, narrow)  # (k, C)
        x_hat = fake_quantize(rows.expand(k, channels, n).reshape(k * channels, n), scale.flatten(),
                              zero_point.flatten(), q_min, q_max, ch_axis=0)  # (k * C, N)
        mse[start:start + k] = (x_hat.view(k, channels, n) - rows).pow(2).mean(dim=2)
    return ratios, mse, unit


class MSEObserver(SampleObserver):
    """Min-max range shrunk by the ratio ``r`` that minimises ``clipping_mse_curve`` on the sample (per channel)."""

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False, narrow: bool = False,
                 ch_axis: int | None = None, num_candidates: int = 100, max_samples: int = 2**16, seed: int = 0):
        super().__init__(bits, symmetric, signed, narrow, ch_axis, max_samples, seed)
        self.num_candidates = check_int(num_candidates, name="num_candidates", low=1)

    def compute_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Candidate ranges shrink the exact extremes; the error is measured on the sample.
        ratios, mse, _ = _clipping_mse(self.all_samples(), self.min_val, self.max_val, self.bits, self.symmetric,
                                       self.signed, self.narrow, self.num_candidates)
        best = ratios[mse.argmin(dim=0)]  # (C,)
        return self.qparams_for_range(best * self.min_val, best * self.max_val)
