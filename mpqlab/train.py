"""Seeded training and evaluation loops with progress bars.

Every loop takes a ``device`` argument, so the same notebook cell runs on a laptop CPU or a GPU.
Training helpers only train; accuracy thresholds are checked in notebooks and tests.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mpqlab.errors import UsageError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a rerun draws the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def repeat_epochs(loader):
    """The batches of ``loader`` without end: a fine-tune of more steps than one epoch starts another pass.

    A shuffling DataLoader with a seeded generator reshuffles from that generator on every pass, so the
    whole sequence is still fixed by the seed.
    """
    while True:
        yield from loader


def default_device() -> str:
    """'cuda' when a GPU is available, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str = "cpu", progress: bool = False) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` over ``loader`` (the model is put in eval mode)."""
    model.eval().to(device)
    correct = total = 0
    for images, labels in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        logits = model(images.to(device))
        correct += (logits.argmax(1) == labels.to(device)).sum().item()
        total += labels.numel()
    return correct / max(total, 1)


def train_epoch(model: nn.Module, loader, optimizer, device: str = "cpu", scheduler=None,
                label_smoothing: float = 0.0, max_steps: int | None = None, desc: str = "train",
                extra_loss=None) -> float:
    """One pass over ``loader`` (or ``max_steps`` batches); returns the mean training loss.

    ``scheduler`` (if given) is stepped after every batch; ``extra_loss(model)`` adds a
    regulariser such as PACT's L2 penalty on the clipping levels.
    """
    model.train().to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    total_loss, steps = 0.0, 0
    if not hasattr(loader, "__len__"):  # an endless stream such as repeat_epochs(loader)
        if max_steps is None:
            raise UsageError("train_epoch over an endless batch stream needs max_steps")
        n = max_steps
    else:
        n = len(loader) if max_steps is None else min(max_steps, len(loader))
    bar = tqdm(loader, total=n, desc=desc, leave=False)
    for images, labels in bar:
        if steps == n:
            break
        loss = criterion(model(images.to(device)), labels.to(device))
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item()
        steps += 1
        bar.set_postfix(loss=f"{total_loss / steps:.3f}")
    return total_loss / max(steps, 1)


class KeepStepsPositive:
    """Wraps an optimizer so that an update taking a learned step size to zero or below halves it instead.

        s_new = s_old - update        if that stays > 0
        s_new = s_old / 2             otherwise (counted in ``halvings``)

    Adam moves every parameter by about its learning rate per update whatever the gradient's size, so a
    step smaller than that learning rate (a 6-bit step of a layer with small weights) can cross zero in a
    single update, and LSQ's quantizer is undefined there. Runs in which no step ever crosses zero are
    exactly those of the bare optimizer. ``train_epoch`` calls ``zero_grad`` and ``step``; give the
    schedulers the wrapped optimizer.
    """

    def __init__(self, optimizer, step_params):
        self.optimizer, self.step_params, self.halvings = optimizer, list(step_params), 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        before = [p.detach().clone() for p in self.step_params]
        self.optimizer.step()
        for p, old in zip(self.step_params, before):
            crossed = p <= 0
            if crossed.any():
                p[crossed] = old[crossed] / 2
                self.halvings += int(crossed.sum())


def cosine_schedule(optimizer, total_steps: int, warmup_steps: int = 0):
    """Per-step learning-rate factor: linear warm-up, then a cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class History:
    """What ``fit`` records per epoch."""

    train_loss: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    seconds: float = 0.0


def fit(model: nn.Module, loaders: dict, epochs: int, lr: float = 0.05, weight_decay: float = 5e-4,
        momentum: float = 0.9, label_smoothing: float = 0.0, device: str = "cpu", optimizer=None,
        max_steps_per_epoch: int | None = None, extra_loss=None, seed: int | None = 0) -> History:
    """Train with SGD (or ``optimizer``) and a per-step cosine schedule; report validation accuracy per epoch."""
    if seed is not None:
        seed_everything(seed)
    model.to(device)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                    weight_decay=weight_decay, nesterov=True)
    steps = len(loaders["train"]) if max_steps_per_epoch is None else min(max_steps_per_epoch, len(loaders["train"]))
    scheduler = cosine_schedule(optimizer, epochs * steps, warmup_steps=min(100, steps))
    history = History()
    start = time.perf_counter()
    for epoch in tqdm(range(epochs), desc="epochs"):
        loss = train_epoch(model, loaders["train"], optimizer, device, scheduler, label_smoothing,
                           max_steps=max_steps_per_epoch, desc=f"epoch {epoch + 1}", extra_loss=extra_loss)
        history.train_loss.append(loss)
        history.val_acc.append(evaluate(model, loaders["val"], device))
    history.seconds = time.perf_counter() - start
    return history
