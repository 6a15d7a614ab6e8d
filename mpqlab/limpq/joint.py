"""LIMPQ's joint training: every layer's importance indicators for every bit-width, from one run.

Tang et al., "Mixed-Precision Neural Network Quantization via Learned Layer-wise Importance",
ECCV 2022, Sec. 3.4. Each searchable layer l (every conv but the first; the first conv and the
classifier stay at 8 bits) holds one LSQ step size per candidate bit-width b, for its weights,
s_w[l][b], and for its input activations, s_a[l][b]. One training step is n + 1 passes:

    for b in bit_options:   every searchable layer at b        -> forward, backward
    once more:               a random (b_w, b_a) per layer      -> forward, backward
    optimizer.step()         on the gradients summed over the n + 1 passes

The random pass (borrowed from one-shot NAS) lets a layer's step at b meet neighbours at other
bit-widths. After training, the step sizes *are* the indicators: a larger step at b means the layer
squeezes more distinct values into one level at that bit-width, so it matters more (Sec. 3.3).
``bn_per_bits=True`` gives each searchable layer one BatchNorm per weight bit-width (the paper's
option): the statistics of a 2-bit conv's outputs differ from those of a 6-bit one.
Which layers are searchable, which are fixed (those reading the image or producing the output) and which
BatchNorm follows each conv are read from the model's traced graph (``mpqlab.graph``), so any
torchvision-style classifier works. Notebook 10 runs this; ``python -m mpqlab.experiments.limpq_indicators``
ships its result, and ``python -m mpqlab indicators`` (``mpqlab.pipeline``) runs it on any model and image
folder, also under torchrun.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mpqlab.checkpoint import atomic_write_bytes
from mpqlab.cost import layer_table
from mpqlab.errors import PolicyError, check_bits
from mpqlab.graph import layer_graph
from mpqlab.limpq.indicators import FixedLayer, Indicators
from mpqlab.quant.lsq import LSQQuantizer
from mpqlab.quant.policy import quantize_model


@dataclass
class JointConfig:
    bit_options: tuple = (2, 3, 4, 5, 6)  # candidate bit-widths, for weights and activations alike
    fixed_bits: int = 8  # first conv and classifier (LIMPQ keeps them at 8 bits)
    steps: int = 200  # joint steps, each n + 1 forward/backward passes
    batch_size: int = 128
    lr: float = 1e-4  # weights and BatchNorm; cosine decay to 0
    step_lr: float = 1e-3  # the LSQ step sizes
    bn_per_bits: bool = False  # one BatchNorm per weight bit-width in every searchable layer
    seed: int = 0  # data order and the random pass
    optimizer: str = "adam"  # "adam", or "sgd" (momentum, as LIMPQ's released code; keeps LSQ's gradient scale)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # on weights only (never on step sizes or BatchNorm)
    max_grad_norm: float | None = None  # clip each pass's gradient to this global norm (keeps its direction)
    random_pass: bool = True  # False: the paper's ablation without the random pass (n passes per step, not n + 1)


class SwitchableBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per bit-width (copies of a trained one); ``bits`` picks the active one."""

    def __init__(self, bn: nn.BatchNorm2d, bit_options, follows: str = ""):
        super().__init__()
        self.norms = nn.ModuleDict({str(b): copy.deepcopy(bn) for b in bit_options})
        self.bits = max(bit_options)
        self.follows = follows  # the conv whose weight bit-width picks the active BatchNorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        return self.norms[str(self.bits)](x)


def searchable_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """(searchable, fixed) layer names, found from the traced graph (``mpqlab.graph.layer_graph``).

    Fixed are the layers that read the image and those that produce the output (the first conv and
    the classifier of a plain classifier); every other conv/linear is searchable. Both lists follow
    the order in which the layers run.
    """
    graph = layer_graph(model)
    return graph.searchable, graph.fixed


def bn_name(conv_name: str) -> str:
    """The workbook's naming convention, ``dw3.conv -> dw3.bn``, ``layer1.0.conv2 -> layer1.0.bn2``.

    Only a reading aid: ``joint_model`` finds the BatchNorm after each conv from the graph
    (``layer_graph(model).bn_after``), which also covers ``downsample.0 -> downsample.1``.
    """
    head, _, last = conv_name.rpartition(".")
    return f"{head}.{last.replace('conv', 'bn')}" if head else last.replace("conv", "bn")


def joint_model(fp_model: nn.Module, bit_options=(2, 3, 4, 5, 6), fixed_bits: int = 8,
                bn_per_bits: bool = False) -> nn.Module:
    """A copy of ``fp_model`` with multi-step LSQ quantizers (``LSQQuantizer(bit_options=...)``).

    Searchable layers start at the highest option. The first conv sees normalised images, which are
    signed, so its activation quantizer is signed; the classifier's input (after ReLU and pooling) is not.
    """
    options = sorted({check_bits(b, name="bit option", low=2) for b in bit_options})
    graph = layer_graph(fp_model)
    searchable = graph.searchable

    def weights(bits, name, layer):
        return LSQQuantizer(bits, "weight", bit_options=options if name in searchable else None)

    def acts(bits, name, layer):
        return LSQQuantizer(bits, "act", signed=name in graph.first,
                            bit_options=options if name in searchable else None)

    policy = {name: (max(options), max(options)) for name in searchable}
    policy |= {name: (fixed_bits, fixed_bits) for name in graph.fixed}
    model = quantize_model(fp_model, policy, weight_quantizer=weights, act_quantizer=acts)
    if bn_per_bits:
        missing = [name for name in searchable if name not in graph.bn_after]
        if missing:
            raise PolicyError(f"no BatchNorm2d directly after {missing[:5]} in the graph; bn_per_bits needs one "
                              "after every searchable layer")
        for name in searchable:
            parent, _, child = graph.bn_after[name].rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, child, SwitchableBatchNorm2d(getattr(owner, child), options, follows=name))
    return model


def set_bits(model: nn.Module, w_bits: dict[str, int], a_bits: dict[str, int]) -> None:
    """Switch layers to the given bit-widths (and their switchable BatchNorm to ``w_bits``).

    ``model`` may be wrapped in ``DistributedDataParallel``; the layers are those of the inner model.
    """
    model = unwrap(model)
    modules = dict(model.named_modules())
    for name, bits in w_bits.items():
        modules[name].w_quantizer.bits = bits
    for bn in modules.values():
        if isinstance(bn, SwitchableBatchNorm2d) and bn.follows in w_bits:
            bn.bits = w_bits[bn.follows]
    for name, bits in a_bits.items():
        modules[name].a_quantizer.bits = bits


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def joint_step(model, layers: list[str], bit_options, images, labels, optimizer, rng: random.Random,
               criterion=None, autocast: bool = False, step_floors: dict | None = None,
               max_grad_norm: float | None = None, random_pass: bool = True) -> list[float]:
    """One LIMPQ step: n uniform passes plus one random pass, gradients summed, one optimizer step.

    Returns the n + 1 losses (uniform passes in ``bit_options`` order, then the random one).
    ``random_pass=False`` is the paper's ablation (LIMPQ Table 6): the n uniform passes only, n losses.
    ``model`` may be a ``DistributedDataParallel``: every backward then averages the gradients over the
    processes (find_unused_parameters, since each pass uses one step size per layer), and ``rng`` must
    be seeded alike everywhere so that every process draws the same random pass.
    ``autocast=True`` runs the forward passes under ``torch.autocast`` (on GPUs, bfloat16).
    ``step_floors`` (``{parameter name: floor}``, see ``step_floors``) projects the step sizes back onto
    ``s >= floor`` after the optimizer step; None leaves them as Adam put them.
    ``max_grad_norm`` rescales each pass's gradient to at most that global norm before adding it to the
    others: the 2-bit pass of a float-trained network sends gradients ~100x those of the other passes
    (measured on MobileNetV1-small: |g| / |p| up to 355 at 2 bits, below 1 at 4 and 6), which plain SGD
    turns into a jump that wrecks the shared weights. Clipping per pass (not the sum) tames that pass
    without shrinking the others, and keeps each pass's direction, so LSQ's gradient scale survives.
    """
    criterion = criterion or nn.CrossEntropyLoss()
    optimizer.zero_grad(set_to_none=True)
    losses = []
    settings = [({n: b for n in layers}, {n: b for n in layers}) for b in bit_options]
    if random_pass:
        settings.append(({n: rng.choice(bit_options) for n in layers}, {n: rng.choice(bit_options) for n in layers}))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total = None
    for w_bits, a_bits in settings:
        set_bits(model, w_bits, a_bits)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = criterion(model(images), labels)
        loss.backward()  # .grad accumulates over the passes
        losses.append(loss.item())
        if max_grad_norm is not None:  # clip this pass alone, keep the sum aside
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            grads = [None if p.grad is None else p.grad.clone() for p in params]
            total = grads if total is None else [
                a if b is None else (b if a is None else a + b) for a, b in zip(total, grads)]
            optimizer.zero_grad(set_to_none=True)
    if total is not None:
        for p, g in zip(params, total):
            p.grad = g
    optimizer.step()
    if step_floors:
        clamp_steps(unwrap(model), step_floors)
    return losses


def step_floors(model: nn.Module, fraction: float) -> dict[str, float]:
    """``{name: fraction * s}`` for every LSQ step size of ``model`` (call it after ``init_steps``).

    Adam moves a parameter by about its learning rate per step whatever its size, so a step size of
    1e-3 (6-bit weights of a wide layer) can cross zero within a few steps at ``step_lr = 1e-3``. Keeping
    every step above a fraction of where it started (projected gradient descent onto ``s >= floor``)
    lets training go on; a step sitting on its floor reads as "this layer hardly needs that bit-width".
    """
    return {n: fraction * float(p.detach()) for n, p in model.named_parameters() if ".steps." in n}


@torch.no_grad()
def clamp_steps(model: nn.Module, floors: dict[str, float]) -> None:
    """``s <- max(s, floor)`` for the step sizes named in ``floors``."""
    params = dict(model.named_parameters())
    for name, floor in floors.items():
        params[name].clamp_(min=floor)


def make_optimizer(model: nn.Module, config: JointConfig) -> torch.optim.Optimizer:
    """Two groups: step sizes at ``step_lr``, everything else at ``lr``; Adam or SGD with momentum.

    Adam divides each gradient by its running magnitude, so it moves every parameter by about its
    learning rate whatever LSQ's gradient scale g = 1 / sqrt(N Q_P) says: the scale is cancelled.
    SGD keeps it (LIMPQ's released code trains the indicators with SGD, lr 0.01, cosine), so a step's
    update stays in proportion to its size. Weight decay, if any, applies to conv/linear weights only.
    """
    if config.optimizer not in ("adam", "sgd"):
        raise PolicyError(f"optimizer must be 'adam' or 'sgd', got {config.optimizer!r}")
    named = list(model.named_parameters())
    steps = [p for n, p in named if ".steps." in n]
    decayed = [p for n, p in named if ".steps." not in n and p.dim() > 1]
    others = [p for n, p in named if ".steps." not in n and p.dim() <= 1]
    groups = [{"params": decayed, "lr": config.lr, "weight_decay": config.weight_decay},
              {"params": others, "lr": config.lr, "weight_decay": 0.0},
              {"params": steps, "lr": config.step_lr, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum)
    return torch.optim.Adam(groups)


def cosine_to_zero(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Each group's learning rate times ``(1 + cos(pi t / steps)) / 2`` at step t: from lr down to 0."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))


def init_steps(model: nn.Module, layers: list[str], bit_options, images: torch.Tensor) -> None:
    """Initialise every step size (LSQ's 2 mean|v| / sqrt(Q_P)) with one no-grad pass per bit-width."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b in bit_options:
            set_bits(model, {n: b for n in layers}, {n: b for n in layers})
            model(images)
    model.train(was_training)


def initial_model(fp_model: nn.Module, config: JointConfig, images: torch.Tensor, device: str = "cpu") -> nn.Module:
    """The joint model before training: every step at LSQ's start ``2 mean|v| / sqrt(Q_P)``, from ``images``.

    ``train_joint`` starts from exactly this (``images`` = its first batch), so the indicators of
    this model are the *untrained* indicators, the control LIMPQ must beat (``limpq_init``).
    """
    options = sorted(config.bit_options)
    model = joint_model(fp_model, options, config.fixed_bits, config.bn_per_bits).to(device)
    layers, _ = searchable_layers(model)
    init_steps(model, layers, options, images.to(device))
    return model


def _batches_from(loader, skip: int):
    """Endless batches of ``loader`` (a new shuffle each pass), the first ``skip`` of them dropped.

    A DataLoader with a seeded generator repeats its order when built again, so skipping the batches
    already used puts a resumed run on exactly the batches the uninterrupted run would have seen.
    """
    seen = 0
    while True:
        for batch in loader:
            if seen >= skip:
                yield batch
            seen += 1


def train_joint(fp_model: nn.Module, loader, config: JointConfig, device: str = "cpu",
                resume_from: Path | str | None = None, save_every: int = 200, min_step_fraction: float = 0.0):
    """Joint training from a float checkpoint; returns (model, history DataFrame with one row per step).

    ``resume_from``: a state file written every ``save_every`` steps (atomically) and read back if it
    exists, so a stopped run continues where it stopped; ``loader`` must be built with the same seed.
    ``min_step_fraction`` > 0 keeps every step size above that fraction of its start (``step_floors``).
    The first batch of ``loader`` sets the initial steps (``initial_model``); training then draws its
    batches from fresh passes over ``loader``. The state file stays after the last step: delete it once
    the result is safely written (``mpqlab.experiments.limpq_indicators`` does), or a second call resumes.
    """
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    options = sorted(config.bit_options)
    first_images = next(iter(loader))[0]
    model = initial_model(fp_model, config, first_images, device)
    layers, _ = searchable_layers(model)
    floors = step_floors(model, min_step_fraction) if min_step_fraction > 0 else None
    optimizer = make_optimizer(model, config)
    scheduler = cosine_to_zero(optimizer, config.steps)
    rows, done, elapsed = [], 0, 0.0
    path = Path(resume_from) if resume_from is not None else None
    if path is not None and path.is_file():
        state = torch.load(path, map_location=device, weights_only=True)
        if state["config"] != asdict(config):
            raise PolicyError(f"{path} was written with other settings ({state['config']}); delete it to start again")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.setstate(_rng_state(state["rng"]))
        torch.set_rng_state(state["torch_rng"])
        rows, done, elapsed = state["rows"], state["step"], state["seconds"]
        print(f"resumed {path} at step {done} of {config.steps}", flush=True)
    batches = _batches_from(loader, done)
    model.train()
    start = time.perf_counter() - elapsed
    for step in tqdm(range(done, config.steps), desc="joint training", initial=done, total=config.steps):
        images, labels = next(batches)
        losses = joint_step(model, layers, options, images.to(device), labels.to(device), optimizer, rng,
                            step_floors=floors, max_grad_norm=config.max_grad_norm, random_pass=config.random_pass)
        scheduler.step()
        rows.append({"step": step, **{f"loss_{b}bit": v for b, v in zip(options, losses)},
                     **({"loss_random": losses[-1]} if config.random_pass else {}),
                     "seconds": time.perf_counter() - start})
        if path is not None and (step + 1) % save_every == 0 and step + 1 < config.steps:
            state = {"config": asdict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": _plain_rng_state(rng.getstate()),
                     "torch_rng": torch.get_rng_state(), "rows": rows, "step": step + 1,
                     "seconds": time.perf_counter() - start}
            atomic_write_bytes(path, lambda f, state=state: torch.save(state, f))
    return model, pd.DataFrame(rows).set_index("step")


def _plain_rng_state(state) -> list:
    """``random.Random.getstate()`` as lists, which ``torch.load(weights_only=True)`` reads back."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state(saved) -> tuple:
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


def step_size_tables(model: nn.Module) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(weights, activations): DataFrames layer x bit-width of the learned step sizes (the indicators)."""
    layers, _ = searchable_layers(model)
    modules = dict(model.named_modules())
    w = {n: modules[n].w_quantizer.step_sizes() for n in layers}
    a = {n: modules[n].a_quantizer.step_sizes() for n in layers}
    return pd.DataFrame(w).T.rename_axis("layer"), pd.DataFrame(a).T.rename_axis("layer")


def indicators_from_model(model: nn.Module, fp_model: nn.Module, input_size=(1, 1, 32, 32)) -> Indicators:
    """The trained steps as an ``Indicators`` object, with MACs and params from ``layer_table(fp_model)``."""
    w, a = step_size_tables(model)
    table = layer_table(fp_model, input_size)
    layers, fixed = searchable_layers(model)
    modules = dict(model.named_modules())
    return Indicators(
        layer_names=layers,
        weight_indicators={n: {int(b): float(v) for b, v in w.loc[n].items()} for n in layers},
        act_indicators={n: {int(b): float(v) for b, v in a.loc[n].items()} for n in layers},
        layer_macs={n: int(table.macs[n]) for n in layers},
        layer_params={n: int(table.params[n]) for n in layers},
        fixed_layers={n: FixedLayer(int(table.macs[n]), int(table.params[n]), modules[n].w_quantizer.bits,
                                    modules[n].a_quantizer.bits) for n in fixed},
    )


def lsq_policy_model(fp_model: nn.Module, policy: dict) -> nn.Module:
    """A copy of ``fp_model`` with plain (one-step) LSQ quantizers at ``policy``'s bit-widths.

    Used to fine-tune a searched policy; the first layers' activation quantizers are signed, as above.
    """
    first = layer_graph(fp_model).first

    def weights(bits, name, layer):
        return LSQQuantizer(bits, "weight")

    def acts(bits, name, layer):
        return LSQQuantizer(bits, "act", signed=name in first)

    return quantize_model(fp_model, policy, weight_quantizer=weights, act_quantizer=acts)

