"""Running on several processes with PyTorch's own engine: torchrun + DistributedDataParallel (DDP).

``torchrun --nproc-per-node N -m mpqlab indicators ...`` starts N copies of the command and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each one's environment;
``init_distributed`` reads them and joins the process group: NCCL when the process has a GPU, Gloo on
CPUs. Without torchrun everything here degrades to one process and changes nothing.

- Data: every process reads its own ``1/N`` of each epoch (``ResumableSampler``, a ``DistributedSampler``
  that can start an epoch part-way, for ``--resume``).
- Gradients: DDP averages them over the processes after every backward, so N processes with batch b
  take the step one process with batch N*b would take, provided BatchNorm also normalises over the
  N*b images: ``sync_batchnorm`` converts every BatchNorm to ``torch.nn.SyncBatchNorm`` on GPUs;
  SyncBatchNorm has no CPU kernels, so on CPUs it uses ``GlooSyncBatchNorm`` below, the same sums
  exchanged with torch's differentiable functional ``all_reduce``, gradients left to autograd.
- Writing: rank 0 alone writes files (``is_main``), atomically, after the others are done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from mpqlab.errors import DeviceError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0  # this process, 0 .. world_size - 1
    world_size: int = 1  # processes in the job, over all nodes
    local_rank: int = 0  # this process on its node: picks its GPU
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistContext:
    """Join torchrun's process group if this process was started by torchrun (``WORLD_SIZE`` > 1).

    ``device=None`` picks ``cuda:LOCAL_RANK`` when GPUs exist, else the CPU; ``"cpu"`` forces the CPU
    (and Gloo). The backend follows the device: NCCL for GPUs, Gloo for CPUs.
    """
    if device is not None and device not in ("cpu", "cuda"):
        raise DeviceError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda, but torch sees no GPU here (torch.cuda.is_available() is False)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device is None or device == "cuda":
        device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(torch.device(device))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def shutdown() -> None:
    """Leave the process group (if any); every rank calls it at the end."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every process: SyncBatchNorm for CPUs.

    mean = sum_p sum_i x / n,  var = sum_p sum_i (x - mean)^2 / n,  n = images * H * W over all processes;
    two ``all_reduce`` calls per forward. torch's functional ``all_reduce`` is differentiable (its
    backward all-reduces the gradient), so each process's inputs receive the gradient of every
    process's loss through the shared statistics, exactly as torch's SyncBatchNorm computes by hand.
    Running statistics are updated as BatchNorm2d does (unbiased variance). In eval mode, or without a
    process group, it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        if not (self.training and dist.is_initialized() and dist.get_world_size(self.process_group) > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count.view(1)]), self.process_group)  # (C + 1,)
        n = sums[-1]
        mean = sums[:-1] / n  # (C,)
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum(dims), self.process_group) / n  # (C,) biased, used to normalise
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    """Sum of ``t`` over the processes, differentiable: its backward sums the gradients over the processes."""
    import torch.distributed._functional_collectives as fc

    return fc.wait_tensor(fc.all_reduce(t, "sum", group))


def _to_gloo_sync(bn: nn.BatchNorm2d, group) -> GlooSyncBatchNorm:
    sync = GlooSyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    sync.load_state_dict(bn.state_dict())
    sync.process_group = group
    return sync.train(bn.training)


def sync_batchnorm(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Every BatchNorm2d normalising over all processes' images (nothing changes in one process)."""
    if not ctx.distributed:
        return model
    if ctx.device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # A process group of their own: DDP all-reduces gradient buckets on the default group while backward
    # still runs, and the statistics' gradients must not queue up among them in a different order per rank.
    return to_gloo_sync_batchnorm(model, dist.new_group(backend="gloo"))


def to_gloo_sync_batchnorm(model: nn.Module, group) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``model`` by a ``GlooSyncBatchNorm`` over ``group`` (in place)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(module, child_name, _to_gloo_sync(child, group))
    return model


def wrap_ddp(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = True) -> nn.Module:
    """``DistributedDataParallel(model)`` in a distributed run, else ``model``.

    ``find_unused_parameters=True`` (the joint step): LIMPQ's passes each use one step size per layer out
    of n, and DDP must not wait for the gradients of the others. DDP broadcasts rank 0's parameters and
    buffers at construction, so every process starts from the same model.
    """
    if not ctx.distributed:
        return model
    ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


class ResumableSampler(DistributedSampler):
    """This process's share of each epoch (``DistributedSampler``, shuffled by seed + epoch), from ``start`` on.

    ``set_position(epoch, start)`` makes the next pass yield that epoch's indices from position
    ``start`` (a count of this process's samples already used), so a resumed run sees the same batches
    as an uninterrupted one. Works without a process group when ``num_replicas`` and ``rank`` are given.
    """

    def __init__(self, dataset, ctx: DistContext, seed: int = 0):
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def gather_objects(obj, ctx: DistContext) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over the processes."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()
