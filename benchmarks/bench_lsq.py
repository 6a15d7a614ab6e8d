"""How fast is our LSQ quantizer? Two comparisons, each against a reference in the same run, printed as ratios.

1. Forward + backward of one 4-million-element tensor: ``lsq_quantize`` (our autograd.Function) and the
   detach-trick composition ``lsq_quantize_autograd`` against PyTorch's fused
   ``torch._fake_quantize_learnable_per_tensor_affine`` (target: at most 1.3x).
2. One training step (forward, backward, SGD update) of ``mobilenet_v1_small`` with LSQ W4A4 (first and
   last layers at 8 bits) against the full-precision model; ``--compile`` adds torch.compile'd versions.

Median over repeats after warm-up. Run: ``python benchmarks/bench_lsq.py [--compile] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mpqlab.quant.lsq import LSQQuantizer, lsq_act_quantizer, lsq_quantize, lsq_quantize_autograd, lsq_weight_quantizer
from mpqlab.quant.policy import quantize_model, uniform_policy


def median_times(fns: dict, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time in seconds of each ``fn()``, after ``warmup`` untimed calls of each.

    The candidates take turns within every repeat (in a rotating order), so a change in machine load (the
    course machines are shared) hits them all alike instead of biasing whichever happened to run during it.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_quantizer(n: int, repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(n, requires_grad=True)
    grad = torch.randn(n)
    q_min, q_max, grad_factor = -8, 7, 1.0 / (n * 7) ** 0.5
    step = torch.tensor(0.3, requires_grad=True)
    step_1d = torch.tensor([0.3], requires_grad=True)
    zero_point = torch.tensor([0.0], requires_grad=True)
    module = LSQQuantizer(4, "weight", init_step=0.3)

    reference = "torch._fake_quantize_learnable_per_tensor_affine"
    fns = {
        reference: lambda: torch._fake_quantize_learnable_per_tensor_affine(
            x, step_1d, zero_point, q_min, q_max, grad_factor).backward(grad),
        "lsq_quantize (autograd.Function)": lambda: lsq_quantize(x, step, q_min, q_max, grad_factor).backward(grad),
        "lsq_quantize_autograd (detach tricks)": lambda: lsq_quantize_autograd(
            x, step, q_min, q_max, grad_factor).backward(grad),
        "LSQQuantizer module": lambda: module(x).backward(grad),
    }
    times = median_times(fns, repeats)
    print(f"\n1) forward + backward on {n:,} elements (median of {repeats})")
    for name, t in times.items():
        print(f"   {name:<50} {t * 1e3:8.1f} ms   {t / times[reference]:.2f}x of PyTorch's fused op")


def training_step(model, images, labels, optimizer):
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return step


def bench_training(batch: int, repeats: int, compile_too: bool) -> None:
    from mpqlab.models import mobilenet_v1_small

    torch.manual_seed(0)
    images, labels = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))
    fp = mobilenet_v1_small().train()
    w4a4 = quantize_model(fp, uniform_policy(fp, 4, 4, first_last_bits=8),
                          weight_quantizer=lsq_weight_quantizer, act_quantizer=lsq_act_quantizer).train()
    models = {"full precision": fp, "LSQ W4A4": w4a4}
    if compile_too:
        models["full precision, compiled"] = torch.compile(fp)
        models["LSQ W4A4, compiled"] = torch.compile(w4a4)
    fns = {name: training_step(model, images, labels, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
           for name, model in models.items()}
    times = median_times(fns, repeats, warmup=5)
    print(f"\n2) one training step of mobilenet_v1_small, batch {batch} (median of {repeats})")
    for name, t in times.items():
        print(f"   {name:<30} {t * 1e3:8.1f} ms   {t / times['full precision']:.2f}x of full precision (eager)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=4_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the course machines share 2 cores)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models (slow to warm up)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    bench_quantizer(args.numel, args.repeats)
    bench_training(args.batch, args.repeats, args.compile)


if __name__ == "__main__":
    main()
