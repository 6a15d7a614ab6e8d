"""Train the shipped full-precision checkpoints from scratch: ``python -m mpqlab.pretrain --model all``.

Writes ``data/checkpoints/{name}.pt``, its ``.json`` metadata (seed, epochs, hyper-parameters,
seconds, validation and test accuracy, SHA-256) and a ``.log`` with one line per epoch.
Seeded: the same command on the same machine gives the same weights.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from mpqlab.checkpoint import checkpoint_dir, save_checkpoint
from mpqlab.data import fashion_mnist_splits, make_loaders
from mpqlab.models import build_model
from mpqlab.train import evaluate, fit, seed_everything

# Recipes of the shipped checkpoints; each fits in well under half an hour on 2 CPU cores.
RECIPES = {
    "mobilenet_v1_small": dict(epochs=10, lr=0.1, weight_decay=4e-5, batch_size=128),
    "resnet20": dict(epochs=5, lr=0.1, weight_decay=5e-4, batch_size=128),
    # notebook 07 (PROFIT); the shipped run took 36 min (4 epochs, one thread of a heavily shared 2-core machine)
    "mobilenet_v3_small": dict(epochs=4, lr=0.1, weight_decay=4e-5, batch_size=128),
}


def pretrain(name: str, epochs: int | None = None, seed: int = 0, device: str = "cpu",
             out_dir: Path | None = None) -> dict:
    """Train model ``name`` with its recipe and save the checkpoint; returns the metadata."""
    recipe = dict(RECIPES[name])
    if epochs is not None:
        recipe["epochs"] = epochs
    out_dir = Path(out_dir) if out_dir else checkpoint_dir()
    seed_everything(seed)
    splits = fashion_mnist_splits(seed=0)
    loaders = make_loaders(splits, batch_size=recipe["batch_size"], seed=seed)
    model = build_model(name)
    history = fit(model, loaders, epochs=recipe["epochs"], lr=recipe["lr"],
                  weight_decay=recipe["weight_decay"], device=device, seed=seed)
    test_acc = evaluate(model, loaders["test"], device)
    meta = {
        "model": name, "seed": seed, **recipe, "device": device,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "seconds": round(history.seconds, 1), "val_acc": history.val_acc, "train_loss": history.train_loss,
        "test_acc": test_acc, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": f"python -m mpqlab.pretrain --model {name} --epochs {recipe['epochs']} --seed {seed}",
    }
    path = save_checkpoint(out_dir / f"{name}.pt", model.state_dict(), meta)
    lines = [f"{name}: seed {seed}, {recipe}, device {device}, {meta['threads']} threads"]
    lines += [f"epoch {i + 1}: train loss {loss:.4f}, val acc {acc:.4f}"
              for i, (loss, acc) in enumerate(zip(history.train_loss, history.val_acc))]
    lines.append(f"test acc {test_acc:.4f} after {history.seconds:.0f} s")
    path.with_suffix(".log").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return meta


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="folder (default data/checkpoints)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(RECIPES) if args.model == "all" else [args.model]
    for name in names:
        pretrain(name, args.epochs, args.seed, args.device, args.out)


if __name__ == "__main__":
    main()
