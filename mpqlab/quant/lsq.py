"""LSQ: Learned Step Size Quantization (Esser et al., ICLR 2020), with one step size per candidate bit-width.

The quantizer has one learnable parameter, the step size ``s`` (our ``scale``):

    v_bar = round(clip(v / s, q_min, q_max))        q_min = -Q_N, q_max = Q_P
    v_hat = s * v_bar

weights are signed (``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1) - 1``), activations after a ReLU unsigned
(``Q_N = 0``, ``Q_P = 2^b - 1``). The straight-through estimator passes ``d v_hat / d v = 1`` for
``-Q_N < v/s < Q_P`` (0 outside), and differentiating the rest gives the step-size gradient

    d v_hat / d s = round(v/s) - v/s    if -Q_N < v/s < Q_P
                  = -Q_N                if v/s <= -Q_N
                  = Q_P                 if v/s >= Q_P

which is then multiplied by the gradient scale ``g = 1 / sqrt(N * Q_P)``. The paper takes N as
the number of weights of the layer (N_W) or "the number of features" (N_F). We use the features of
*one sample* (``x[0].numel()``): the loss is a batch mean, so each sample's gradient already carries
1/B and the sum over the batch behaves like the sum over one sample. (Some public code uses the whole
batch's ``numel``; that only divides ``g`` by a further sqrt(B).) ``grad_scale=False`` sets g = 1.

The step starts at ``s = 2 mean(|v|) / sqrt(Q_P)``, computed on the first tensor the quantizer sees.

LIMPQ (Tang et al. 2022) keeps one step per candidate bit-width and reads the learned steps as layer
importance indicators: pass ``bit_options=[2, 3, 4, 5, 6]``; setting ``.bits`` selects the active
step, each initialised the first time it is used, and ``step_sizes()`` returns them all.
Introduced in the learnable-quantization notebook (PACT, QIL, LSQ, LSQ+).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError, check_bits, check_positive
from mpqlab.quant.quantizer import Quantizer
from mpqlab.quant.ste import round_ste


def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(q_min, q_max) = (-Q_N, Q_P)``: ``(-2^(b-1), 2^(b-1) - 1)`` if signed, else ``(0, 2^b - 1)``."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def lsq_init_step(x: torch.Tensor, q_max: int) -> float:
    """LSQ's initial step ``s = 2 mean(|x|) / sqrt(Q_P)``."""
    return 2.0 * float(x.detach().abs().mean()) / math.sqrt(q_max)


def check_step(step: torch.Tensor) -> None:
    """Raise QuantParamError if a learned step size is no longer positive (skipped inside torch.compile)."""
    if not torch.compiler.is_compiling() and not float(step.detach()) > 0:
        raise QuantParamError(f"the step size must stay positive, it is now {float(step.detach()):.4g}; "
                              "lower the learning rate of the quantizer parameters")


class _LSQFunction(torch.autograd.Function):
    """Fake quantization with LSQ's gradients, in as few passes over memory as we could manage.

    Element-wise passes over a large activation dominate the cost of QAT on a CPU. Forward makes four
    (divide, clip in place, round, scale) and saves the clipped ``v`` and ``v_bar``; backward makes one
    pass for ``grad_x`` and two read-only dot products for the step: 7 passes in all, where building
    the STE mask as a float tensor in forward took 12 and was about 2x slower. The arithmetic of every
    value is unchanged, so results written before this rewrite are reproduced bit for bit. (``LSQQuantizer``
    adds one read-only pass before this: the sum that checks its input for NaN/Inf, see quantizer.py.)
    """

    @staticmethod
    def forward(ctx, x, step, offset, q_min, q_max, grad_factor):
        v = torch.div(x - offset if offset is not None else x, step)
        # clipping in place: where q_min < v < q_max it leaves v unchanged, and an overflowed v = inf
        # becomes q_max, so backward never multiplies 0 by inf
        v_clip = v.clamp_(q_min, q_max)
        v_bar = torch.round(v_clip)
        ctx.save_for_backward(v_clip, v_bar)
        ctx.bounds = (q_min, q_max)
        ctx.grad_factor = grad_factor
        ctx.has_offset = offset is not None
        out = v_bar * step
        return out.add_(offset) if offset is not None else out

    @staticmethod
    def backward(ctx, grad):
        v_clip, v_bar = ctx.saved_tensors
        q_min, q_max = ctx.bounds
        # the STE: grad where q_min < v < q_max, else 0. hardtanh's backward is exactly this rule,
        # fused into one pass (v_clip equals q_min or q_max wherever v was outside)
        grad_x = torch.ops.aten.hardtanh_backward(grad, v_clip, q_min, q_max)
        # sum(grad * dv_hat/ds) with dv_hat/ds = v_bar - v * inside, as two read-only dot products
        grad_step = (torch.dot(grad.reshape(-1), v_bar.reshape(-1))
                     - torch.dot(grad_x.reshape(-1), v_clip.reshape(-1)))
        grad_step = grad_step * ctx.grad_factor
        if not torch.compiler.is_compiling() and not torch.isfinite(grad_step):
            raise TensorValueError(
                f"the LSQ step-size gradient is {float(grad_step)}: the quantizer's input or the gradient "
                "reaching it holds NaN/Inf values (often a learning rate that is too large)"
            )
        grad_offset = None
        if ctx.has_offset:  # d v_hat / d beta = 1 outside the range, 0 inside
            grad_offset = (grad.sum() - grad_x.sum()) * ctx.grad_factor
        return grad_x, grad_step, grad_offset, None, None, None


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, q_min: int, q_max: int,
                 grad_factor: float = 1.0, offset: torch.Tensor | None = None) -> torch.Tensor:
    """LSQ fake quantization ``s * round(clip((x - offset) / s, q_min, q_max)) + offset`` (offset 0 unless given).

    Gradients: x gets 1 inside ``q_min < v < q_max`` and 0 outside; ``step`` gets
    ``grad_factor * sum(grad * (round(v) - v))`` inside plus ``q_min`` / ``q_max`` outside;
    ``offset`` (LSQ+) gets ``grad_factor * sum(grad)`` over the elements outside the range.

    >>> lsq_quantize(torch.tensor([0.26, 0.74, 5.0]), torch.tensor(0.5), 0, 3)
    tensor([0.5000, 0.5000, 1.5000])
    """
    if torch.compiler.is_compiling() and offset is None:
        # Inside torch.compile the detach-trick form is faster: inductor fuses it and the backward it derives
        # into a few kernels, while the hand-written backward stays a chain of separate calls (measured: a
        # compiled W4A4 step 1.5-1.6x of the float step with the Function, 0.85-0.9x with this form). The two
        # differ only for values exactly on a grid end, where clamp's gradient counts the end as inside.
        return lsq_quantize_autograd(x, step, q_min, q_max, grad_factor)
    return _LSQFunction.apply(x, step, offset, float(q_min), float(q_max), float(grad_factor))


def lsq_quantize_autograd(x: torch.Tensor, step: torch.Tensor, q_min: int, q_max: int,
                          grad_factor: float = 1.0) -> torch.Tensor:
    """The same quantizer written with detach tricks, letting autograd derive the gradients.

    Slower in eager mode (a reference for the tests); inside ``torch.compile`` it is the faster form, and
    ``lsq_quantize`` switches to it there.

    ``step * g + (step - step * g).detach()`` has the value of ``step`` and gradient ``g``.
    """
    step = step * grad_factor + (step - step * grad_factor).detach()
    return round_ste(torch.clamp(x / step, q_min, q_max)) * step


class LSQQuantizer(Quantizer):
    """Per-tensor LSQ quantizer; ``role`` is "weight" (signed, N = numel) or "act" (unsigned, N = features per sample).

    ``signed`` overrides the role's default (a signed activation quantizer suits an input that can be
    negative, e.g. the normalised image entering the first layer). ``bit_options`` lists the
    bit-widths that get their own step (default: only ``bits``). ``init_step`` replaces the lazy
    initialisation of the starting bit-width's step.
    """

    def __init__(self, bits: int, role: str = "weight", *, signed: bool | None = None, grad_scale: bool = True,
                 bit_options: list[int] | None = None, init_step: float | None = None):
        if role not in ("weight", "act"):
            raise QuantParamError(f"role must be 'weight' or 'act', got {role!r}")
        self.signed = (role == "weight") if signed is None else bool(signed)
        # a signed 1-bit grid {-1, 0} has Q_P = 0: no positive level and g = 1/sqrt(0)
        self.min_bits = 2 if self.signed else 1
        super().__init__(bits)
        self.role = role
        self.grad_scale = grad_scale
        options = [self.bits] if bit_options is None else bit_options
        low, high = self.min_bits, self.max_bits
        self.bit_options = sorted({check_bits(b, name="bit option", low=low, high=high) for b in options})
        if self.bits not in self.bit_options:
            raise BitWidthError(f"bits={self.bits} is not one of bit_options={self.bit_options}")
        self.steps = nn.ParameterDict({str(b): nn.Parameter(torch.tensor(1.0)) for b in self.bit_options})
        self.register_buffer("initialized", torch.zeros(len(self.bit_options), dtype=torch.bool))
        self._active_bits = self.bits
        # Python mirror of `initialized`, so that torch.compile does not break the graph reading a tensor every call
        self._ready: set[int] = set()
        self.register_load_state_dict_post_hook(_forget_ready)
        if init_step is not None:
            with torch.no_grad():
                self.step.fill_(check_positive(init_step, name="init_step"))
            self.initialized[self.bit_options.index(self.bits)] = True

    def bits_changed(self) -> None:
        if self.bits not in self.bit_options:
            bad, self._bits = self._bits, self._active_bits  # keep the quantizer usable
            raise BitWidthError(f"bits={bad} has no step size here; this quantizer learns one for {self.bit_options}")
        self._active_bits = self.bits

    @property
    def step(self) -> nn.Parameter:
        """The step size of the active bit-width."""
        return self.steps[str(self.bits)]

    def step_sizes(self) -> dict[int, float]:
        """``{bits: step}`` for every bit option (uninitialised steps read as NaN)."""
        done = self.initialized.tolist()
        return {b: float(self.steps[str(b)].detach()) if ok else math.nan for b, ok in zip(self.bit_options, done)}

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:
        q_min, q_max = lsq_range(self.bits, self.signed)
        if self.bits not in self._ready:
            index = self.bit_options.index(self.bits)
            if not bool(self.initialized[index]):
                self._initialize(x, q_max, index)
            if bool(self.initialized[index]):
                self._ready.add(self.bits)
        check_step(self.step)
        g = 1.0
        if self.grad_scale:
            n = x.numel() if self.role == "weight" or x.dim() < 2 else x[0].numel()
            g = 1.0 / math.sqrt(n * q_max)
        return lsq_quantize(x, self.step, q_min, q_max, g)

    def _initialize(self, x: torch.Tensor, q_max: int, index: int) -> None:
        s = lsq_init_step(x, q_max)
        if math.isnan(s) or math.isinf(s):
            raise TensorValueError(f"cannot initialise the LSQ step from a tensor holding NaN/Inf (got mean|x| -> {s})")
        if s > 0:  # an all-zero batch is quantized exactly by any step: wait for a non-zero one
            with torch.no_grad():
                self.step.fill_(s)
            self.initialized[index] = True

    def extra_repr(self) -> str:
        return f"bits={self.bits}, role={self.role}, signed={self.signed}, bit_options={self.bit_options}"


def _forget_ready(module: LSQQuantizer, incompatible_keys) -> None:
    module._ready.clear()  # a loaded state may say differently


def lsq_weight_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> LSQQuantizer:
    """Factory for ``quantize_model``: a signed LSQ weight quantizer."""
    return LSQQuantizer(bits, "weight")


def lsq_act_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> LSQQuantizer:
    """Factory for ``quantize_model``: an unsigned LSQ activation quantizer (inputs after a ReLU)."""
    return LSQQuantizer(bits, "act")


def check_finite_grads(model: nn.Module) -> None:
    """Raise TensorValueError naming every parameter whose gradient holds NaN or Inf (call after ``backward``)."""
    bad = [name for name, p in model.named_parameters()
           if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    if bad:
        raise TensorValueError(f"non-finite gradients (NaN/Inf) in {len(bad)} parameter(s): {', '.join(bad)}")
