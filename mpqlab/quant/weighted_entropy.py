"""Weighted-entropy quantization (Park, Ahn & Yoo, "Weighted-Entropy-based Quantization for Deep
Neural Networks", CVPR 2017).

Plain entropy counts how evenly the codes are used; weighted entropy also asks how much each
code matters. For clusters k with population share P_k and mean importance I_k,

    S = - sum_k I_k P_k log P_k          (natural log)

Weights: importance i = w^2. The 2^b levels are K = 2^(b-1) magnitude clusters mirrored for the
sign. Clusters are runs of the sorted |w|; starting from equal populations, each boundary in turn
jumps to the position that maximises S (coordinate ascent) until a sweep no longer raises S.
Cluster k is represented by sqrt(I_k), its RMS magnitude. Since I_k P_k = E_k / n (E_k: the
cluster's sum of w^2), S = -(1/n) sum_k E_k log P_k needs only a cumulative sum over the sorted
magnitudes, so all candidate positions of one boundary are scored in one vector operation.

Activations (post-ReLU, nonnegative): log-domain levels with base 2^(1/16),

    v_0 = 0,   v_n = 2^((fsr + (n - 1) step) / 16),   n = 1 .. N - 1,   N = 2^b

and a is mapped to the level whose interval [v_n, v_{n+1}) holds it: 0 below v_1, the top level
above v_{N-1}. (fsr, step) maximise S over a batch, with our reading of the paper's activation
importance: a level's importance is its own value, I_n = v_n (larger activations matter more; the
zero level counts for nothing). fsr ranges over the data's 1/16-octave codes, step over 1..16.
Signed tensors (a network's first input) use one bit for the sign, mirroring the magnitude levels.

Introduced in notebook 03 (weighted-entropy quantization).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mpqlab.errors import check_bits, check_tensor
from mpqlab.quant.log import exp2_steps
from mpqlab.quant.quantizer import Quantizer

ACT_BASE_DIVISOR = 16  # levels are powers of 2^(1/16)
ACT_STEPS = range(1, 17)  # level spacing from 2^(1/16) to 2 (one octave)
ACT_OCTAVES = 32  # fsr is searched at most this many octaves below the max
ACT_SEARCH_SAMPLES = 2**18  # the quantizer searches on an evenly strided sample of a large batch


def weighted_entropy(importance: torch.Tensor, cluster: torch.Tensor) -> float:
    """S = -sum_k I_k P_k log P_k, for per-element importances and cluster indices (both (n,))."""
    n = cluster.numel()
    counts = torch.bincount(cluster.flatten())
    sums = torch.bincount(cluster.flatten(), weights=importance.flatten().double())
    used = counts > 0
    p = counts[used].double() / n
    i_mean = sums[used] / counts[used]
    return float(-(i_mean * p * torch.log(p)).sum())


@dataclass
class WeightClusters:
    levels: torch.Tensor  # (K,) cluster representatives sqrt(I_k), increasing
    thresholds: torch.Tensor  # (K-1,) |w| at or above thresholds[k] belongs to cluster k+1 or higher
    bounds: torch.Tensor  # (K+1,) cluster starts in the sorted magnitudes, bounds[-1] = n
    entropy: float  # S of this clustering
    sweeps: int  # coordinate-ascent sweeps used (0 for equal population)
    converged: bool  # True if the last sweep no longer raised S


def _clusters(mags: torch.Tensor, energy: torch.Tensor, bounds: list[int], sweeps: int,
              converged: bool) -> WeightClusters:
    n, b = mags.numel(), torch.tensor(bounds)
    counts, sums = (b[1:] - b[:-1]).double(), energy[b[1:]] - energy[b[:-1]]
    entropy = float(-(sums * torch.log(counts / n)).sum() / n)
    thresholds = (mags[b[1:-1] - 1] + mags[b[1:-1]]) / 2
    return WeightClusters(torch.sqrt(sums / counts), thresholds, b, entropy, sweeps, converged)


def _sorted_energy(w: torch.Tensor):
    mags = check_tensor(w).detach().abs().flatten().double().sort().values  # (n,)
    energy = torch.cat([mags.new_zeros(1), torch.cumsum(mags**2, 0)])  # (n+1,) E[j] = sum of the j smallest w^2
    return mags, energy


def _equal_bounds(n: int, bits: int) -> list[int]:
    k = min(2 ** (check_bits(bits, high=8) - 1), n)  # K = 2^(b-1) clusters, fewer if there are fewer weights
    return [(j * n) // k for j in range(k + 1)]


def equal_population_levels(w: torch.Tensor, bits: int) -> WeightClusters:
    """The baseline: K = 2^(b-1) magnitude clusters of (nearly) equal size, each represented by sqrt(I_k)."""
    mags, energy = _sorted_energy(w)
    return _clusters(mags, energy, _equal_bounds(mags.numel(), bits), 0, converged=False)


def weighted_entropy_levels(w: torch.Tensor, bits: int, init_bounds: torch.Tensor | None = None,
                            max_sweeps: int = 200) -> WeightClusters:
    """Weight clusters that maximise S (module docstring): the paper's coordinate ascent.

    Each sweep moves every boundary in turn to its best position between its neighbours; we stop
    when a sweep no longer raises S, or after ``max_sweeps`` (then ``converged`` is False: with
    many clusters, 6-8 bits, the boundaries drift slowly). ``init_bounds`` warm-starts from a
    previous result of the same size and bits (fine-tuning); the default is equal population.
    """
    mags, energy_t = _sorted_energy(w)
    n, energy = mags.numel(), energy_t.numpy()
    log_p = np.full(n + 1, -np.inf)
    np.log(np.arange(n + 1) / n, out=log_p, where=np.arange(n + 1) > 0)  # log_p[c] = log(c / n)
    bounds = _equal_bounds(n, bits)
    if init_bounds is not None and len(init_bounds) == len(bounds) and int(init_bounds[-1]) == n:
        bounds = [int(b) for b in init_bounds]
    s_old = _entropy(energy, log_p, bounds)
    for sweep in range(1, max_sweeps + 1):
        for j in range(1, len(bounds) - 1):
            lo, hi = bounds[j - 1], bounds[j + 1]
            e = energy[lo + 1:hi]  # energy below each candidate boundary lo+1 .. hi-1 (both sides non-empty)
            score = -(e - energy[lo]) * log_p[1:hi - lo] - (energy[hi] - e) * log_p[hi - lo - 1:0:-1]
            best = int(np.argmax(score))
            if score[best] > score[bounds[j] - lo - 1]:
                bounds[j] = lo + 1 + best
        s_new = _entropy(energy, log_p, bounds)
        if s_new <= s_old:
            return _clusters(mags, energy_t, bounds, sweep, converged=True)
        s_old = s_new
    return _clusters(mags, energy_t, bounds, max_sweeps, converged=False)


def _entropy(energy: np.ndarray, log_p: np.ndarray, bounds: list[int]) -> float:
    b = np.asarray(bounds)
    return float(-(np.diff(energy[b]) * log_p[np.diff(b)]).sum() / (len(log_p) - 1))


def quantize_to_levels(w: torch.Tensor, levels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """sign(w) * levels[k] for the cluster k of |w| (sign(0) = +1), with a straight-through gradient."""
    k = torch.bucketize(w.detach().abs().contiguous(), thresholds.to(w.dtype), right=True)  # (a transposed view)
    sign = torch.where(w.detach() >= 0, 1.0, -1.0).to(w.dtype)
    return sign * levels.to(w.dtype)[k] + (w - w.detach())  # straight-through, exactly on the levels


def act_levels(bits: int, fsr: int, step: int, signed: bool = False) -> torch.Tensor:
    """v_0 = 0, v_n = 2^((fsr + (n-1) step) / 16) for n = 1 .. 2^m - 1 (m = b, or b - 1 if signed), float64."""
    m = check_bits(bits, low=2 if signed else 1, high=8) - int(signed)
    mags = exp2_steps(fsr + torch.arange(2**m - 1) * step, ACT_BASE_DIVISOR)
    levels = torch.cat([torch.zeros(1, dtype=torch.float64), mags])
    return torch.cat([-mags.flip(0), levels]) if signed else levels


def act_quantize(a: torch.Tensor, bits: int, fsr: int, step: int, signed: bool = False) -> torch.Tensor:
    """The level v_n with v_n <= |a| < v_{n+1} (times sign(a) if signed; negatives -> 0 if not), STE gradient."""
    m = check_bits(bits, low=2 if signed else 1, high=8) - int(signed)
    mag = check_tensor(a).detach().abs() if signed else check_tensor(a).detach().clamp(min=0)
    code = torch.floor(ACT_BASE_DIVISOR * torch.log2(mag))  # 1/16-octave code, -inf at 0
    n = torch.where(code >= fsr, 1 + torch.div(code - fsr, step, rounding_mode="floor"), 0).clamp(max=2**m - 1)
    q = torch.where(n > 0, exp2_steps(fsr + (n - 1) * step, ACT_BASE_DIVISOR, a.dtype), 0.0)
    return q * (torch.sign(a.detach()) if signed else 1) + (a - a.detach())  # straight-through


def act_search(a: torch.Tensor, bits: int, signed: bool = False) -> tuple[int, int, float]:
    """(fsr, step, S) maximising the activations' weighted entropy with I_n = v_n; all candidates at once."""
    m = check_bits(bits, low=2 if signed else 1, high=8) - int(signed)
    mag = check_tensor(a).detach().flatten().double()
    mag = mag.abs() if signed else mag
    pos = mag[mag > 0]
    if pos.numel() == 0:
        return 0, 1, 0.0
    code = torch.floor(ACT_BASE_DIVISOR * torch.log2(pos)).long()  # (n_pos,)
    hi = int(code.max())
    lo = max(int(code.min()), hi - ACT_BASE_DIVISOR * ACT_OCTAVES)
    hist = torch.bincount(code.clamp(min=lo - 1) - (lo - 1))  # bin 0 holds everything below lo
    below = torch.cat([hist.new_zeros(1), torch.cumsum(hist, 0)])  # below[t] = count with code < lo - 1 + t
    fsr = torch.arange(lo, hi + 1)[:, None, None]  # (F, 1, 1)
    step = torch.tensor(list(ACT_STEPS))[None, :, None]  # (1, T, 1)
    edges = fsr + torch.arange(2**m)[None, None, :] * step  # (F, T, N): code where level n = 1 .. N-1 starts
    at = (edges - (lo - 1)).clamp(0, below.numel() - 1)
    at[..., -1] = below.numel() - 1  # the top level is open-ended
    counts = (below[at[..., 1:]] - below[at[..., :-1]]).double()  # (F, T, N-1) population of levels 1..N-1
    p = counts / mag.numel()
    v = exp2_steps(edges[..., :-1], ACT_BASE_DIVISOR)  # (F, T, N-1) level values = importances
    s = -(v * p * torch.log(p.clamp(min=1e-300))).sum(-1)  # (F, T)
    best = int(torch.argmax(s))
    f_i, t_i = divmod(best, s.shape[1])
    return lo + f_i, ACT_STEPS[t_i], float(s.flatten()[best])


class WeightedEntropyWeightQuantizer(Quantizer):
    """Weights on weighted-entropy levels; re-clustered (warm-started) on every training-mode call.

    In eval mode the levels are computed once and cached; ``train()``/``eval()`` clears the cache.
    """

    max_bits = 8

    def __init__(self, bits: int):
        super().__init__(bits)
        self.clusters: WeightClusters | None = None

    def bits_changed(self) -> None:
        self.clusters = None

    def train(self, mode: bool = True):
        self.clusters = None
        return super().train(mode)

    def quantize_float(self, w: torch.Tensor) -> torch.Tensor:
        if self.training or self.clusters is None:
            warm = None if self.clusters is None else self.clusters.bounds
            self.clusters = weighted_entropy_levels(w, self.bits, init_bounds=warm)
        return quantize_to_levels(w, self.clusters.levels, self.clusters.thresholds)


class WeightedEntropyActQuantizer(Quantizer):
    """Activations on searched log levels: (fsr, step) re-searched on each training batch (on at most
    ``ACT_SEARCH_SAMPLES`` strided values), kept in eval (searched on the first batch if never set).
    ``signed=None`` decides from the first batch (signed if it holds negative values)."""

    max_bits = 8

    def __init__(self, bits: int, signed: bool | None = None):
        super().__init__(bits)
        self.signed = signed
        self.register_buffer("fsr_step", torch.tensor([0, 0]))  # step 0 = not searched yet

    def quantize_float(self, a: torch.Tensor) -> torch.Tensor:
        if self.signed is None:
            self.signed = bool((a.detach() < 0).any())
        if self.training or int(self.fsr_step[1]) == 0:
            sample = a.detach().flatten()[:: max(1, a.numel() // ACT_SEARCH_SAMPLES)]
            fsr, step, _ = act_search(sample, self.bits, self.signed)
            self.fsr_step.copy_(torch.tensor([fsr, step]))
        fsr, step = self.fsr_step.tolist()
        return act_quantize(a, self.bits, fsr, step, self.signed)


def we_weight_quantizer(bits: int, name: str = "", layer=None) -> WeightedEntropyWeightQuantizer:
    """Factory for ``quantize_model``."""
    return WeightedEntropyWeightQuantizer(bits)


def we_act_quantizer(bits: int, name: str = "", layer=None) -> WeightedEntropyActQuantizer:
    """Factory for ``quantize_model``."""
    return WeightedEntropyActQuantizer(bits)
