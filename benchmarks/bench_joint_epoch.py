"""How many plain training epochs does one epoch of LIMPQ joint training cost?

    python benchmarks/bench_joint_epoch.py [--repeats 5] [--batch-size 64] [--model mobilenet_v1_small]

An epoch is a fixed number of steps of the same batch size either way, so the ratio of epochs is the
ratio of one joint step (n = 5 uniform passes + 1 random pass, LSQ quantizers, one Adam step) to one
plain float step (forward, backward, one Adam step), measured in the same run, one torch thread.
The README's "Beyond the laptop" section quotes it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_times, print_ratio_table  # noqa: E402
from mpqlab.limpq.joint import (  # noqa: E402
    JointConfig, init_steps, joint_model, joint_step, make_optimizer, searchable_layers,
)
from mpqlab.models import mobilenet_v1_small, resnet20  # noqa: E402

OPTIONS = [2, 3, 4, 5, 6]
MODELS = {"mobilenet_v1_small": mobilenet_v1_small, "resnet20": resnet20}


def bench(model: str, batch_size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    fp = MODELS[model]().train()
    images, labels = torch.randn(batch_size, 1, 32, 32), torch.randint(0, 10, (batch_size,))
    joint = joint_model(fp.eval(), OPTIONS).train()
    layers, _ = searchable_layers(joint)
    init_steps(joint, layers, OPTIONS, images)
    joint_opt = make_optimizer(joint, JointConfig(lr=0.0, step_lr=0.0))  # lr 0: identical work, stable state
    plain_opt = torch.optim.Adam(fp.parameters(), lr=0.0)
    rng = random.Random(0)
    fp.train()

    def plain_step():
        plain_opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(fp(images), labels).backward()
        plain_opt.step()

    times = median_times({"1 plain float step": plain_step,
                          "1 joint step": lambda: joint_step(joint, layers, OPTIONS, images, labels, joint_opt, rng)},
                         repeats=repeats, warmup=1)
    print_ratio_table(f"{model}: joint step vs plain float step (batch {batch_size}, 1 thread)", times,
                      "1 plain float step")
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", choices=sorted(MODELS), default="mobilenet_v1_small")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench(args.model, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
