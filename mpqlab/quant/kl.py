"""KL (entropy) calibration: pick the clipping threshold whose quantized histogram loses the least information.

NVIDIA TensorRT's 8-bit calibration (Migacz 2017, "8-bit Inference with TensorRT", GTC talk):

1. Histogram ``|x|`` into ``num_bins`` = 2048 bins over ``[0, max|x|]``.
2. For every candidate ``i = num_levels .. num_bins`` (threshold ``T_i`` = the edge ``i * bin_width``):
   - reference ``P`` = bins ``0 .. i-1``, with the outliers (bins ``i ..``) added to bin ``i-1``
     (clipping moves them onto the threshold);
   - candidate ``Q``: merge the same ``i`` bins (without the outliers) into ``num_levels`` groups,
     then spread each group's mass uniformly over the group's bins where ``P`` is non-zero;
   - ``KL(P || Q) = sum_k p_k log(p_k / q_k)`` after normalising both to sum 1.
3. Return the ``T_i`` with the smallest divergence.

Only one kind of candidate makes the divergence infinite: one whose last group of ``Q`` is empty, i.e. the
bins merged into ``Q``'s top level hold no values of their own while outliers are folded onto the last bin
of ``P``. There ``q_k = 0 < p_k`` and ``KL = +inf``. Such a candidate's last bin is empty, but an empty last
bin alone is not enough: as soon as the last group holds any value, ``Q`` spreads that group's mass over the
last bin too and the divergence stays finite (tests/test_kl_infinite_candidates.py). So clipping even a lone
outlier is allowed, unless all the bins just below the threshold that form ``Q``'s top level are empty.
We smooth ``Q`` by mixing in a little of the uniform distribution over ``P``'s non-empty bins,
``Q <- (1 - eps) Q + eps U`` with ``eps = 1e-4`` (implementations derived from TensorRT's, e.g. MXNet's,
smooth zero bins with a similar small epsilon), so such candidates get a large but finite divergence.
With ``eps = 0`` they get +inf and can never be chosen.

``num_levels`` is the number of quantization levels between 0 and T: 128 for int8 (TensorRT),
``2^(bits-1)`` for a signed grid and ``2^bits`` for an unsigned grid over non-negative data (ReLU
outputs), so 4- and 6-bit calibration work too. We report the bin *edge* ``i * bin_width`` as the
threshold (TensorRT uses the centre ``(i + 0.5) * bin_width``: half a bin more, at most 0.4% of it).

Two details follow NVIDIA's PyTorch calibrator (pytorch-quantization, ``HistogramCalibrator``) and
matter below 8 bits: the search starts at bin ``first_bin = 128`` whatever the bit-width (T >= max/16),
and the first bin's count is replaced by the second's (``suppress_zero_spike``). ReLU outputs hold up
to half their values at exactly 0; zero is exact on every grid, but the spike would dominate the
divergence and drag T towards 0 (at 4 bits it picks T ~ max/256 without these two details).

``KLObserver`` histograms every value it sees, batch by batch, and stores only the histogram, as that
calibrator's ``collect`` does: the first batch fixes the bin width ``w = max|x| / num_bins`` (bins
``[k w, (k+1) w)`` from 0); a later batch reaching beyond the last edge appends bins of the same width, so
the counts already collected stay exact, and the search runs on the whole histogram, however many bins it
has. One batch therefore gives exactly ``kl_calibration``'s threshold, and several batches the threshold
of the histogram of all their values on the first batch's edges (tests/test_kl_streaming.py).
Introduced in notebook 01.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mpqlab.errors import QuantParamError, check_int, check_tensor
from mpqlab.quant.observers import MinMaxObserver


@dataclass
class KLCalibration:
    """Result of KL calibration; everything needed to plot the KL curve over the histogram."""

    threshold: float          # chosen clipping threshold T (a bin edge)
    thresholds: np.ndarray    # (num_bins - num_levels + 1,) candidate thresholds i * bin_width
    kl: np.ndarray            # same shape: KL(P || Q) per candidate
    hist: np.ndarray          # (num_bins,) counts of |x|
    bin_edges: np.ndarray     # (num_bins + 1,)


def _xlogx(v: np.ndarray) -> np.ndarray:
    """``v log v`` with ``0 log 0 = 0``."""
    return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


def kl_curve(hist, num_levels: int = 128, eps: float = 1e-4, first_bin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``KL(P_i || Q_i)`` for every candidate ``i = max(num_levels, first_bin) .. num_bins``; returns ``(i, kl)``.

    All the bins of P that share a group j get the same q_j, so the per-bin sum splits as

        KL = sum_k p_k log p_k  -  sum_j p(group j) log q_j

    and both parts come from cumulative sums of the histogram, for blocks of candidates together
    rather than in a Python loop (tests/test_kl.py checks it against the literal loop, bin by bin).
    """
    h = np.asarray(hist, dtype=np.float64)
    total = h.sum()
    if total <= 0:
        raise QuantParamError("the histogram is empty: KL calibration needs at least one count")
    candidates = np.arange(max(num_levels, min(first_bin, len(h))), len(h) + 1)  # candidate i keeps bins 0 .. i-1
    cum = np.concatenate([[0.0], np.cumsum(h)])                # cum[k] = mass of bins 0 .. k-1
    cum_nonempty = np.concatenate([[0], np.cumsum(h > 0)])     # non-empty bins among 0 .. k-1
    cum_xlogx = np.concatenate([[0.0], np.cumsum(_xlogx(h))])
    # Each candidate is independent; blocks of candidates keep the (I, L) arrays small when an observer's
    # histogram has grown to many bins.
    block = max(1, 2**21 // num_levels)
    kl = np.concatenate([_kl_block(h, i, num_levels, eps, total, cum, cum_nonempty, cum_xlogx)
                         for i in np.split(candidates, range(block, len(candidates), block))])
    return candidates, kl


def _kl_block(h, i, num_levels, eps, total, cum, cum_nonempty, cum_xlogx) -> np.ndarray:
    """``kl_curve`` for the candidates ``i`` (I,), given the histogram's cumulative sums."""
    outliers = total - cum[i]                                  # (I,) mass clipped onto bin i-1
    p_last = h[i - 1] + outliers                               # (I,) P's last bin
    # Group j of candidate i holds bins edges[j] .. edges[j+1] - 1, edges[j] = ceil(j * i / num_levels).
    edges = (np.arange(num_levels + 1) * i[:, None] + num_levels - 1) // num_levels  # (I, L + 1)
    q_mass = np.diff(cum[edges], axis=1)                       # (I, L) each group's own bins (no outliers)
    support = np.diff(cum_nonempty[edges], axis=1)             # (I, L) bins of the group where P > 0
    support[:, -1] += (h[i - 1] == 0) & (outliers > 0)         # outliers fill an empty last bin of P
    p_mass = q_mass.copy()
    p_mass[:, -1] += outliers
    share = q_mass / np.maximum(cum[i], 1e-300)[:, None]       # Q normalised to sum 1, per group
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (1 - eps) * share / support + eps / support.sum(axis=1, keepdims=True)  # per bin, smoothed
        cross = np.where(p_mass > 0, p_mass * np.log(q), 0.0).sum(axis=1) / total
    neg_entropy = (cum_xlogx[i - 1] + _xlogx(p_last)) / total - np.log(total)    # sum_k p_k log p_k
    return neg_entropy - cross


def kl_from_histogram(hist, bin_width: float, num_levels: int = 128, eps: float = 1e-4,
                      first_bin: int = 0) -> KLCalibration:
    """Run the threshold search on a histogram of ``|x|`` whose bins are ``bin_width`` wide, starting at 0.

    Candidates are ``i = max(num_levels, first_bin) .. num_bins`` bins."""
    hist = np.asarray(hist, dtype=np.float64)
    num_bins = hist.shape[0]
    if not 2 <= num_levels <= num_bins:
        raise QuantParamError(f"num_levels must be in [2, num_bins={num_bins}], got {num_levels}")
    if not bin_width > 0:
        raise QuantParamError(f"bin_width must be positive, got {bin_width}")
    candidates, kl = kl_curve(hist, num_levels, eps, first_bin)
    thresholds = candidates * bin_width
    return KLCalibration(threshold=float(thresholds[np.argmin(kl)]), thresholds=thresholds, kl=kl, hist=hist,
                         bin_edges=np.arange(num_bins + 1) * bin_width)


def first_bin_width(top: float, num_bins: int) -> float:
    """Width ``w`` of ``num_bins`` bins over ``[0, top]``: ``top / num_bins``, one ulp wider if rounding would
    end the last bin (``num_bins * w`` in float64) short of ``top``. An all-zero ``top`` gets ``[0, 1]``."""
    if top <= 0:
        return 1.0 / num_bins
    width = top / num_bins
    while width * num_bins < top:
        width = math.nextafter(width, math.inf)
    return width


def abs_histogram(a: torch.Tensor, width: float, num_bins: int) -> torch.Tensor:
    """float64 counts of the values ``a`` (>= 0, all <= ``num_bins * width``) in the bins ``[k w, (k+1) w)``.

    The edges are ``k * w`` in float64 and the last bin is closed, as ``np.histogram(a, np.arange(num_bins + 1)
    * w)``, value for value: a bin is found by comparing with the edges, not by rounding ``a / w``.
    """
    inner = torch.arange(1, num_bins, dtype=torch.float64) * width  # (num_bins - 1,) edges between bins
    index = torch.bucketize(a.to(torch.float64).flatten(), inner, right=True)  # edges[k] <= a < edges[k+1]
    return torch.bincount(index, minlength=num_bins).to(torch.float64)


def kl_search(hist, bin_width: float, num_levels: int = 128, eps: float = 1e-4, first_bin: int = 128,
              suppress_zero_spike: bool = True) -> KLCalibration:
    """``kl_from_histogram`` on raw counts of ``|x|``, with ``suppress_zero_spike`` applied to the searched copy
    (``KLCalibration.hist`` keeps the raw counts)."""
    hist = np.asarray(hist, dtype=np.float64)
    searched = hist.copy()
    if suppress_zero_spike and hist.shape[0] > 1 and hist[1:].sum() > 0:  # (an all-zero x keeps its one bin)
        searched[0] = searched[1]
    result = kl_from_histogram(searched, bin_width, num_levels, eps, first_bin)
    result.hist = hist
    return result


def kl_calibration(x: torch.Tensor, num_levels: int = 128, num_bins: int = 2048,
                   max_abs: float | None = None, eps: float = 1e-4, first_bin: int = 128,
                   suppress_zero_spike: bool = True) -> KLCalibration:
    """Histogram ``|x|`` into ``num_bins`` bins over ``[0, max|x|]`` and find the KL-optimal threshold.

    ``max_abs`` widens the range to at least that.
    An all-zero ``x`` gets a histogram over [0, 1] (the threshold then clips nothing that exists).
    ``first_bin`` and ``suppress_zero_spike``: see the module docstring (``KLCalibration.hist`` keeps the raw counts).
    """
    check_tensor(x)
    a = x.detach().abs().flatten().cpu().to(torch.float64)
    top = max(float(a.max()), 0.0 if max_abs is None else float(max_abs))
    width = first_bin_width(top, num_bins)
    return kl_search(abs_histogram(a, width, num_bins).numpy(), width, num_levels, eps, first_bin,
                     suppress_zero_spike)


class KLObserver(MinMaxObserver):
    """Per-tensor observer whose range is ``[max(x_min, -T), min(x_max, T)]`` with T from the KL search.

    It keeps a histogram of ``|x|`` over every value seen since ``reset()``, never the values themselves,
    built as pytorch-quantization's ``HistogramCalibrator.collect`` builds it (NVIDIA TensorRT repository,
    tools/pytorch-quantization/pytorch_quantization/calib/histogram.py): the first batch sets the bin width
    (``max|x| / num_bins``, from 0); a batch reaching beyond the last edge appends bins of that same width;
    the search (``first_bin = 128``, ``suppress_zero_spike``, as ``kl_calibration``) runs on all the bins.
    So one batch gives exactly ``kl_calibration(x, levels, num_bins).threshold``.

    Two cases that calibrator does not meet: batches that are all zero (no width to take from them) are
    counted in bin 0 and the width is set by the first batch holding a nonzero value; and a range that
    grows past ``max_bins`` bins (a batch ``max_bins / num_bins`` times larger than the first) merges
    neighbouring bins in pairs, as often as needed, so memory stays bounded (the merged counts are still exact
    for the wider bins, whose edges are every other old edge).

    ``num_levels=None`` uses the levels the grid has between 0 and T: ``2^bits`` for an unsigned grid
    over data that is never negative (ReLU outputs), else ``2^(bits-1)`` (128 at 8 bits, as TensorRT).
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False, narrow: bool = False,
                 num_levels: int | None = None, num_bins: int = 2048, max_bins: int | None = None):
        super().__init__(bits, symmetric, signed, narrow, None)
        self.num_levels = None if num_levels is None else check_int(num_levels, name="num_levels", low=2)
        self.num_bins = check_int(num_bins, name="num_bins", low=2)
        self.max_bins = check_int(16 * self.num_bins if max_bins is None else max_bins, name="max_bins",
                                  low=self.num_bins)
        self.register_buffer("hist", None, persistent=False)  # (bins,) float64 counts of |x| once a width is set
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.hist = None
        self.bin_width: float | None = None
        self.zero_count = 0  # values seen while every value so far was 0 (before a width exists)
        self.on_last_edge = 0  # values exactly on the last edge, which the closed last bin holds

    def observe(self, rows: torch.Tensor) -> None:
        a = rows.detach().abs().flatten().cpu().to(torch.float64)  # (N,), exact for any float input
        top = float(a.max())
        hist, width, zero_count, on_edge = self.hist, self.bin_width, self.zero_count, self.on_last_edge
        if width is None and top == 0:
            zero_count += a.numel()
        else:
            if width is None:  # the first nonzero batch fixes the bins; earlier zeros all fall in bin 0
                width = first_bin_width(top, self.num_bins)
                hist = torch.zeros(self.num_bins, dtype=torch.float64)
                hist[0], zero_count = float(zero_count), 0
            elif top > hist.shape[0] * width:
                hist, width = self._grown(hist, width, top, on_edge)
                on_edge = 0  # (every value seen so far is now below the last edge)
            hist = hist + abs_histogram(a, width, hist.shape[0])
            on_edge += int((a == hist.shape[0] * width).sum())
        super().observe(rows)  # exact extremes; refuses a changed channel count before anything is kept
        self.hist, self.bin_width, self.zero_count, self.on_last_edge = hist, width, zero_count, on_edge

    def _grown(self, hist: torch.Tensor, width: float, top: float, on_edge: int) -> tuple[torch.Tensor, float]:
        """``hist`` extended by empty bins of width ``width`` until its last edge reaches ``top``
        (bins merged in pairs while that would take more than ``max_bins``)."""
        # The last bin is closed (as np.histogram's): the ``on_edge`` values equal to its right edge move to the
        # bin that now starts there, so every bin is [k w, (k+1) w) of all the values, as if seen at once.
        hist = torch.cat([hist, hist.new_tensor([float(on_edge)])])
        hist[-2] -= on_edge
        wide = width
        while top / wide > self.max_bins:  # doubling is exact, so every merged edge is an old edge
            wide *= 2
        if wide > width:
            factor = wide / width  # a power of two
            merged = (torch.div(torch.arange(hist.shape[0]), int(factor), rounding_mode="floor")
                      if factor < hist.shape[0] else torch.zeros(hist.shape[0], dtype=torch.long))
            hist = torch.zeros(int(merged[-1]) + 1, dtype=torch.float64).index_add_(0, merged, hist)
            width = wide
        n = max(hist.shape[0], math.ceil(top / width))  # NVIDIA's calibrator: ceil(max / width) bins
        while n * width < top:  # (rounding)
            n += 1
        return torch.cat([hist, hist.new_zeros(n - hist.shape[0])]), width

    def histogram(self) -> tuple[np.ndarray, float]:
        """``(counts, bin_width)`` of every ``|x|`` seen; before any nonzero value, ``kl_calibration``'s all-zero
        histogram (``num_bins`` bins over [0, 1])."""
        self._check_seen()
        if self.bin_width is None:
            hist = np.zeros(self.num_bins)
            hist[0] = self.zero_count
            return hist, first_bin_width(0.0, self.num_bins)
        return self.hist.numpy().copy(), self.bin_width

    def compute_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_seen()
        all_levels_positive = not self.signed and bool(self.min_val.min() >= 0)
        levels = self.num_levels or max(2, 2 ** (self.bits - (0 if all_levels_positive else 1)))
        hist, width = self.histogram()
        threshold = kl_search(hist, width, min(levels, self.num_bins)).threshold
        return self.qparams_for_range(self.min_val.clamp(min=-threshold), self.max_val.clamp(max=threshold))
