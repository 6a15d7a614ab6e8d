"""The bodies of ``python -m mpqlab indicators`` and ``finetune``: LIMPQ end to end on any model and image folder.

    indicators  joint training (``mpqlab.limpq.joint``: n uniform passes + 1 random pass per step), then
                the learned step sizes as an indicator file (``save_indicators``) for ``mpqlab search``
    finetune    the searched policy with one-step LSQ quantizers (``lsq_policy_model``), fine-tuned as
                ``mpqlab.qat.fine_tune`` does (data-initialised quantizers, BatchNorm re-estimated then
                frozen, SGD with a smaller learning rate for the step sizes, clipped gradients, cosine decay)

Both keep every LSQ step size above ``--min-step-fraction`` of its initial value (``joint.step_floors``):
on a network trained elsewhere, or a random one, some steps start near 1e-3 and the optimizer's first
moves would carry them below zero.

Both run in one process or under ``torchrun`` (``mpqlab.distributed``: DDP, a sampler per process,
synchronised BatchNorm), show progress on rank 0, and save a resume file every ``checkpoint_every``
steps: model, optimizer, schedule, position in the data and every process's random state, so that
``--resume`` after a crash continues the same run (bit for bit on CPUs with ``--workers 0``; data loader
workers reseed per epoch, which changes the random crops after a resume but not their distribution).
"""

from __future__ import annotations

import io
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm.auto import tqdm

from mpqlab.checkpoint import atomic_write_bytes, save_checkpoint
from mpqlab.distributed import (
    DistContext, ResumableSampler, all_reduce_sum, barrier, gather_objects, init_distributed, shutdown,
    sync_batchnorm, wrap_ddp,
)
from mpqlab.errors import CheckpointError, PolicyError, UsageError, check_bits
from mpqlab.graph import layer_graph
from mpqlab.model_zoo import input_channels, resolve_model


def check_training_args(args) -> None:
    """Raise UsageError naming the first out-of-range option of ``indicators`` / ``finetune``."""
    for name, low in (("batch_size", 1), ("workers", 0), ("checkpoint_every", 1), ("max_steps", 1),
                      ("stop_after_steps", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UsageError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if not 0 <= args.min_step_fraction < 1:
        raise UsageError(f"--min-step-fraction must be in [0, 1), got {args.min_step_fraction}")
    if not args.epochs > 0:
        raise UsageError(f"--epochs must be positive, got {args.epochs}")
    for b in getattr(args, "bits", []):
        check_bits(b, name="--bits option", low=2, high=8)


# ---------------------------------------------------------------- data


@dataclass
class Data:
    train: object  # a Dataset of (image (C, H, W), label)
    val: object
    num_classes: int
    in_channels: int
    image_size: int


def load_data(root=None, image_size: int | None = None) -> Data:
    """``root/train`` and ``root/val`` image folders (``mpqlab.image_folder``), or the bundled Fashion-MNIST."""
    if root is None:
        from mpqlab.data import fashion_mnist_splits

        if image_size not in (None, 32):
            raise PolicyError(f"--image-size {image_size}: the bundled Fashion-MNIST is 32x32; "
                              "give --data DIR to train on other image sizes")
        splits = fashion_mnist_splits()
        return Data(splits.train, splits.val, 10, 1, 32)
    from mpqlab.image_folder import image_folder_data

    folder = image_folder_data(root, 224 if image_size is None else image_size)
    return Data(folder.train, folder.val, len(folder.classes), 3, folder.image_size)


def model_and_data(args) -> tuple[nn.Module, Data]:
    """The float model ``--model``/``--weights`` for ``--data``'s classes (grey images repeated if it reads RGB)."""
    data = load_data(args.data, args.image_size)
    model = resolve_model(args.model, args.weights, num_classes=data.num_classes, in_channels=data.in_channels)
    head = model.get_submodule(layer_graph(model).last[-1])
    if isinstance(head, nn.Linear) and head.out_features != data.num_classes:
        raise PolicyError(f"--model {args.model} predicts {head.out_features} classes, --data has {data.num_classes}; "
                          "give the factory a num_classes parameter")
    wanted = input_channels(model)
    if wanted != data.in_channels:
        if not (data.in_channels == 1 and isinstance(data.train, TensorDataset)):
            raise PolicyError(f"--model {args.model} reads {wanted}-channel images, --data gives {data.in_channels}")
        grey = [d.tensors for d in (data.train, data.val)]
        data.train, data.val = (TensorDataset(x.expand(-1, wanted, -1, -1), y) for x, y in grey)
        data.in_channels = wanted
    return model, data


def train_loader(dataset, ctx: DistContext, batch_size: int, workers: int, seed: int):
    """(loader, sampler): this process's batches; ``sampler.set_position`` picks the epoch and start."""
    sampler = ResumableSampler(dataset, ctx, seed)
    if len(sampler) < batch_size:
        raise PolicyError(f"--batch-size {batch_size} is larger than this process's share of the training set "
                          f"({len(sampler)} images over {ctx.world_size} process(es))")
    # A generator of its own: creating an iterator then draws nothing from torch's global random state
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        generator=generator, pin_memory=ctx.device.startswith("cuda"),
                        persistent_workers=False)
    return loader, sampler


def evaluate_distributed(model: nn.Module, dataset, ctx: DistContext, batch_size: int, workers: int) -> float:
    """Top-1 accuracy over all of ``dataset``, each process scoring every ``world_size``-th image."""
    from mpqlab.train import evaluate

    mine = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    loader = DataLoader(mine, batch_size=batch_size, num_workers=workers)
    correct, total = all_reduce_sum([evaluate(model, loader, ctx.device) * len(mine), len(mine)], ctx)
    return correct / max(total, 1)


# ---------------------------------------------------------------- resumable loop


def resume_path(out) -> Path:
    """Where a run writing ``out`` keeps its resume file: ``out`` + ``.resume.pt``."""
    out = Path(out)
    return out.with_name(out.name + ".resume.pt")


def save_resume(path: Path, step: int, model, optimizer, scheduler, rng: random.Random, ctx: DistContext,
                run_key: dict, extra=None) -> None:
    """Every rank sends its random state to rank 0, which writes the resume file atomically."""
    states = gather_objects(torch.get_rng_state(), ctx)
    if not ctx.is_main:
        return
    state = {"step": step, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "python_rng": rng.getstate(), "torch_rng": states, "run": run_key, "extra": extra}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))


def load_resume(path: Path, ctx: DistContext, run_key: dict) -> dict:
    """The resume file of an interrupted run with the same settings (``weights_only=True``)."""
    if not path.is_file():
        raise CheckpointError(f"--resume: no resume file {path}; it is written every --checkpoint-every steps")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged file
        raise CheckpointError(f"--resume: {path} could not be read ({type(err).__name__}: {err})") from None
    if state.get("run") != run_key:
        changed = sorted(k for k in run_key if state.get("run", {}).get(k) != run_key[k])
        raise CheckpointError(f"--resume: {path} belongs to a run with other settings ({', '.join(changed)}); "
                              "rerun with the same arguments or delete it")
    if len(state["torch_rng"]) != ctx.world_size:
        raise CheckpointError(f"--resume: {path} was written by {len(state['torch_rng'])} process(es), "
                              f"this run has {ctx.world_size}; resume with the same number")
    return state


def restore(state: dict, optimizer, scheduler, rng: random.Random, ctx: DistContext) -> int:
    """Put the optimizer, schedule and random states back; return the step to continue from."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"][ctx.rank])
    return int(state["step"])


def run_steps(step_fn, loader, sampler: ResumableSampler, total_steps: int, start_step: int, ctx: DistContext,
              on_checkpoint, checkpoint_every: int, desc: str, stop_after: int | None = None) -> int:
    """Call ``step_fn(images, labels)`` for steps ``start_step .. total_steps - 1``, epoch after epoch.

    Step t reads batch ``t mod steps_per_epoch`` of epoch ``t // steps_per_epoch``; ``on_checkpoint(t)``
    runs after every ``checkpoint_every``-th step and the last. ``stop_after`` ends the run early (as a
    crash would, without a checkpoint of its own): the tests' stand-in for a killed job. Returns the
    last step done.
    """
    batch_size = loader.batch_size
    steps_per_epoch = sampler.num_samples // batch_size
    step = start_step
    with tqdm(total=total_steps, initial=step, desc=desc, disable=not ctx.is_main, file=sys.stderr) as bar:
        while step < total_steps:
            epoch, k = divmod(step, steps_per_epoch)
            sampler.set_position(epoch, k * batch_size)
            for images, labels in loader:
                step_fn(images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True))
                step += 1
                bar.update()
                if step % checkpoint_every == 0 or step == total_steps:
                    on_checkpoint(step)
                if step == total_steps or (stop_after is not None and step - start_step >= stop_after):
                    return step
    return step


def total_steps(epochs: float, sampler: ResumableSampler, batch_size: int, max_steps: int | None) -> int:
    """``epochs`` passes over this process's share of the data, at least one step, at most ``max_steps``."""
    steps = max(1, int(epochs * (sampler.num_samples // batch_size)))
    return steps if max_steps is None else min(steps, max_steps)


def run_key(args, names: tuple) -> dict:
    """The arguments a resumed run must share with the one it continues."""
    return {n: (list(v) if isinstance(v, tuple) else v) for n in names if (v := getattr(args, n)) is not None}


# ---------------------------------------------------------------- indicators


INDICATOR_KEYS = ("model", "weights", "data", "image_size", "epochs", "batch_size", "bits", "lr", "step_lr",
                  "min_step_fraction", "bn_per_bits", "seed", "max_steps")


def indicators(args) -> int:
    """Joint training (LIMPQ Sec. 3.4) on ``args.data``; rank 0 writes the indicator file ``args.out``."""
    from mpqlab.limpq.indicators import save_indicators
    from mpqlab.limpq.joint import (
        JointConfig, cosine_to_zero, indicators_from_model, init_steps, joint_model, joint_step, make_optimizer,
        searchable_layers, step_floors,
    )

    start = time.perf_counter()
    ctx = init_distributed(args.device)
    try:
        torch.manual_seed(args.seed)
        fp_model, data = model_and_data(args)
        options = sorted(set(args.bits))
        config = JointConfig(bit_options=tuple(options), lr=args.lr, step_lr=args.step_lr,
                             bn_per_bits=args.bn_per_bits, seed=args.seed, batch_size=args.batch_size)
        model = joint_model(fp_model, options, config.fixed_bits, config.bn_per_bits).to(ctx.device)
        layers, _ = searchable_layers(model)
        loader, sampler = train_loader(data.train, ctx, args.batch_size, args.workers, args.seed)
        steps = total_steps(args.epochs, sampler, args.batch_size, args.max_steps)
        key, path = run_key(args, INDICATOR_KEYS), resume_path(args.out)
        state = load_resume(path, ctx, key) if args.resume else None
        if state is None:
            sampler.set_position(0)
            images = next(iter(loader))[0].to(ctx.device)
            init_steps(model, layers, options, images)  # LSQ's start; DDP then copies rank 0's everywhere
            floors = step_floors(model, args.min_step_fraction)
        else:
            model.load_state_dict(state["model"])
            floors = state["extra"]
        model = sync_batchnorm(model, ctx)
        if ctx.distributed:  # every rank clamps at rank 0's floors (DDP copies rank 0's initial steps)
            floors = gather_objects(floors, ctx)[0]
        optimizer = make_optimizer(model, config)
        scheduler = cosine_to_zero(optimizer, steps)
        rng = random.Random(args.seed)  # the same on every rank: every process draws the same random pass
        first = 0 if state is None else restore(state, optimizer, scheduler, rng, ctx)
        ddp = wrap_ddp(model, ctx)
        ddp.train()

        def step_fn(images, labels):
            joint_step(ddp, layers, options, images, labels, optimizer, rng, autocast=args.amp, step_floors=floors)
            scheduler.step()

        def checkpoint(step):
            save_resume(path, step, model, optimizer, scheduler, rng, ctx, key, extra=floors)

        done = run_steps(step_fn, loader, sampler, steps, first, ctx, checkpoint, args.checkpoint_every,
                         "joint training", args.stop_after_steps)
        if done < steps:
            return 3  # stopped on purpose (--stop-after-steps): no indicator file
        if ctx.is_main:
            size = (1, data.in_channels, data.image_size, data.image_size)
            extra = {"source": "python -m mpqlab indicators", "settings": key, "steps": steps,
                     "processes": ctx.world_size, "seconds": time.perf_counter() - start,
                     "torch": torch.__version__}
            save_indicators(args.out, indicators_from_model(model.cpu(), fp_model, size), extra)
            path.unlink(missing_ok=True)  # the run is complete: nothing left to resume
            print(f"wrote {args.out}: {len(layers)} searchable layers, {steps} joint steps on "
                  f"{ctx.world_size} process(es), {time.perf_counter() - start:.1f} s", file=sys.stderr)
        barrier(ctx)
        return 0
    finally:
        shutdown()


# ---------------------------------------------------------------- finetune


def read_policy(path) -> dict:
    """``{layer: (w_bits, a_bits)}`` from the JSON ``python -m mpqlab search`` prints (fixed layers included)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"--policy file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PolicyError(f"--policy {path} is not a JSON file ({err}); write it with `python -m mpqlab search ... "
                          "> policy.json`") from None
    keys = ("layer_names", "weight_bits", "act_bits")
    if not isinstance(raw, dict) or any(k not in raw for k in keys):
        raise PolicyError(f"--policy {path} needs the keys {list(keys)} that `python -m mpqlab search` prints")
    if not len(raw["layer_names"]) == len(raw["weight_bits"]) == len(raw["act_bits"]):
        raise PolicyError(f"--policy {path}: layer_names, weight_bits and act_bits differ in length")
    policy = {n: (w, a) for n, w, a in zip(raw["layer_names"], raw["weight_bits"], raw["act_bits"])}
    return policy | {n: tuple(bits) for n, bits in raw.get("fixed_layers", {}).items()}


FINETUNE_KEYS = ("model", "weights", "data", "image_size", "policy", "epochs", "batch_size", "lr", "quant_lr",
                 "min_step_fraction", "seed", "max_steps")


def calibration_images(loader, sampler: ResumableSampler, n: int = 1024) -> torch.Tensor:
    """Up to ``n`` training images from the start of epoch 0 (quantizer initialisation, BatchNorm statistics)."""
    sampler.set_position(0)
    chunks, count = [], 0
    for images, _ in loader:
        chunks.append(images)
        count += len(images)
        if count >= n:
            break
    return torch.cat(chunks)[:n]


def finetune(args) -> int:
    """Fine-tune ``args.policy`` (as ``mpqlab.qat.fine_tune``); rank 0 writes the state dict ``args.out``."""
    from mpqlab.limpq.joint import clamp_steps, lsq_policy_model, step_floors
    from mpqlab.qat import frozen_bn_train, initialize_quantizers, param_groups, recalibrate_bn
    from mpqlab.train import cosine_schedule

    start = time.perf_counter()
    ctx = init_distributed(args.device)
    try:
        torch.manual_seed(args.seed)
        fp_model, data = model_and_data(args)
        policy = read_policy(args.policy)
        model = lsq_policy_model(fp_model, policy).to(ctx.device)
        loader, sampler = train_loader(data.train, ctx, args.batch_size, args.workers, args.seed)
        steps = total_steps(args.epochs, sampler, args.batch_size, args.max_steps)
        key, path = run_key(args, FINETUNE_KEYS), resume_path(args.out)
        state = load_resume(path, ctx, key) if args.resume else None
        if state is None:
            images = calibration_images(loader, sampler)
            initialize_quantizers(model, images, ctx.device)
            recalibrate_bn(model, images, device=ctx.device)
            floors = step_floors(model, args.min_step_fraction)
        else:
            model.load_state_dict(state["model"])
            floors = state["extra"]
        model = sync_batchnorm(model, ctx)
        if ctx.distributed:
            floors = gather_objects(floors, ctx)[0]
        optimizer = torch.optim.SGD(param_groups(model, args.lr, args.quant_lr), momentum=0.9)
        scheduler = cosine_schedule(optimizer, steps)
        rng = random.Random(args.seed)
        first = 0 if state is None else restore(state, optimizer, scheduler, rng, ctx)
        ddp = wrap_ddp(model, ctx, find_unused_parameters=False)  # every parameter is used in every step

        def step_fn(images, labels):
            frozen_bn_train(ddp)  # BatchNorm keeps its re-estimated statistics, as in fine_tune
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = nn.functional.cross_entropy(ddp(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
            optimizer.step()
            clamp_steps(model, floors)
            scheduler.step()

        def checkpoint(step):
            save_resume(path, step, model, optimizer, scheduler, rng, ctx, key, extra=floors)

        done = run_steps(step_fn, loader, sampler, steps, first, ctx, checkpoint, args.checkpoint_every,
                         "fine-tune", args.stop_after_steps)
        if done < steps:
            return 3
        accuracy = evaluate_distributed(model, data.val, ctx, args.batch_size, args.workers)
        if ctx.is_main:
            meta = {"source": "python -m mpqlab finetune", "settings": key, "steps": steps,
                    "val_accuracy": accuracy, "processes": ctx.world_size,
                    "seconds": time.perf_counter() - start, "policy": {n: list(b) for n, b in policy.items()}}
            save_checkpoint(args.out, model.cpu().state_dict(), meta)
            path.unlink(missing_ok=True)
            print(f"wrote {args.out}: validation accuracy {accuracy:.4f} after {steps} steps on "
                  f"{ctx.world_size} process(es)", file=sys.stderr)
        barrier(ctx)
        return 0
    finally:
        shutdown()
