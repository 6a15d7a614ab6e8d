"""How fast is our ``fake_quantize``? Compared with PyTorch's fused native kernels in the same run.

1. Forward + backward of a 4-million-element tensor, per-tensor: ``mpqlab.quant.uniform.fake_quantize``
   (an autograd.Function that computes the STE mask once) against ``torch.fake_quantize_per_tensor_affine``
   (target: at most 1.3x). Then per-channel (1024 x 4096 weights, ch_axis 0) against
   ``torch.fake_quantize_per_channel_affine``.
2. ``--model``: one training step (forward, backward, SGD update) of ``mobilenet_v1_small`` with the
   default uniform quantizers on every conv and linear layer at W4A4 (``--first-last-bits 8`` keeps the
   first and last at 8 bits) against the full-precision model (target: at most 1.6x); ``--compile``
   adds torch.compile'd versions of both, each compared with the compiled full-precision step. The
   notebooks stay eager: compiling takes minutes, and the quantizers skip their value checks while
   compiling (``mpqlab.quant.uniform.checks_enabled``), so the graph has no breaks.

Median over interleaved repeats after warm-up. The load average is printed: on a shared machine only
the ratios are comparable between runs. Run:
``python benchmarks/bench_fake_quant.py [--model] [--compile] [--threads 1] [--batch 128]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_times, print_ratio_table  # noqa: E402

from mpqlab.quant.policy import quantize_model, uniform_policy  # noqa: E402
from mpqlab.quant.ptq import calibrate  # noqa: E402
from mpqlab.quant.uniform import fake_quantize, qparams_from_range  # noqa: E402


def bench_per_tensor(n: int, repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(n, requires_grad=True)
    grad = torch.randn(n)
    scale, zero_point = qparams_from_range(-2.5, 3.0, 8)  # uint8, asymmetric: some values clip

    def ours():
        torch.autograd.grad(fake_quantize(x, scale, zero_point, 0, 255), x, grad)

    def native():
        y = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zero_point), 0, 255)
        torch.autograd.grad(y, x, grad)

    times = median_times({"torch.fake_quantize_per_tensor_affine": native, "mpqlab fake_quantize": ours}, repeats)
    print_ratio_table(f"per-tensor fake-quantize, forward + backward, {n:,} elements",
                      times, "torch.fake_quantize_per_tensor_affine", target=1.3)


def bench_per_channel(rows: int, cols: int, repeats: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(rows, cols, requires_grad=True)
    grad = torch.randn(rows, cols)
    max_abs = w.detach().abs().amax(dim=1)
    scale, zero_point = qparams_from_range(-0.8 * max_abs, 0.8 * max_abs, 4, symmetric=True, signed=True)

    def ours():
        torch.autograd.grad(fake_quantize(w, scale, zero_point, -8, 7, ch_axis=0), w, grad)

    def native():
        y = torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -8, 7)
        torch.autograd.grad(y, w, grad)

    times = median_times({"torch.fake_quantize_per_channel_affine": native, "mpqlab fake_quantize": ours}, repeats)
    print_ratio_table(f"per-channel fake-quantize, forward + backward, {rows} x {cols}",
                      times, "torch.fake_quantize_per_channel_affine", target=1.3)


def bench_training_step(batch: int, repeats: int, compile_models: bool, first_last_bits: int | None) -> None:
    from mpqlab.models import mobilenet_v1_small

    torch.manual_seed(0)
    images = torch.randn(batch, 1, 32, 32)  # (N, C, H, W) Fashion-MNIST padded to 32 x 32
    labels = torch.randint(0, 10, (batch,))
    fp = mobilenet_v1_small()
    quantized = quantize_model(fp, uniform_policy(fp, 4, 4, first_last_bits=first_last_bits))
    calibrate(quantized, images)  # freezes the activation ranges; weights stay dynamic (min-max every step)
    models = {"full precision": fp, "W4A4 uniform": quantized}
    steps = {}
    for name, model in models.items():
        steps[name] = make_step(model, images, labels)
    title = f"mobilenet_v1_small training step, batch {batch}, W4A4 (first/last: {first_last_bits or 4} bits)"
    print_ratio_table(title + ", eager", median_times(steps, repeats, warmup=2), "full precision", target=1.6)
    if not compile_models:
        return
    compiled = {}
    for name, model in models.items():
        step = make_step(torch.compile(model), images, labels)
        start = time.perf_counter()
        step()  # the first call compiles forward and backward
        print(f"  compiling {name}: {time.perf_counter() - start:.0f} s", flush=True)
        compiled[f"{name} (compiled)"] = step
    print_ratio_table(title + ", torch.compile", median_times(compiled, repeats, warmup=2),
                      "full precision (compiled)", target=1.6)


def make_step(model, images, labels):
    """One SGD training step of ``model`` on the fixed batch, as a function of no arguments."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machines are shared)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--n", type=int, default=4_000_000, help="elements of the per-tensor benchmark")
    parser.add_argument("--model", action="store_true", help="also time a MobileNetV1 W4A4 training step")
    parser.add_argument("--compile", action="store_true", help="with --model: add torch.compile'd models")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--first-last-bits", type=int, default=None,
                        help="with --model: bits of the first and last layer (default: 4, like the rest)")
    parser.add_argument("--skip-tensor", action="store_true", help="with --model: skip the tensor benchmarks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, load average {load}")
    if not (args.model and args.skip_tensor):
        bench_per_tensor(args.n, args.repeats)
        bench_per_channel(1024, 4096, args.repeats)
    if args.model:
        bench_training_step(args.batch, max(3, args.repeats // 3), args.compile, args.first_last_bits)


if __name__ == "__main__":
    main()
