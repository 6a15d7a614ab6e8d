"""Does LIMPQ's joint step cost more than the passes it is made of, and how many plain epochs is a joint epoch?

    python benchmarks/bench_joint.py [--repeats 5] [--batch-size 64] [--model mobilenet_v1_small]

One joint step (n = 5 uniform passes + 1 random pass, gradients summed, one optimizer step) against
n + 1 plain LSQ steps of the same network (one-step LSQ quantizers, searchable layers at 4 bits, first
and last at 8 as in the joint model), measured in the same run, one torch thread: target ratio
<= 1.1, i.e. no overhead beyond the passes themselves. In the same run, one plain float training
step (forward, backward, one Adam step): an epoch is a fixed number of steps either way, so the joint
step's ratio to it is what an epoch of joint training costs in plain epochs (quoted in the README's
"Beyond the laptop"). The search and the panel update are timed by benchmarks/bench_search.py.
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
    JointConfig, init_steps, joint_model, joint_step, lsq_policy_model, make_optimizer, searchable_layers,
)
from mpqlab.models import mobilenet_v1_small, resnet20  # noqa: E402

OPTIONS = [2, 3, 4, 5, 6]
MODELS = {"mobilenet_v1_small": mobilenet_v1_small, "resnet20": resnet20}


def bench_step(model: str, batch_size: int, repeats: int) -> None:
    torch.manual_seed(0)
    fp = MODELS[model]().eval()
    images, labels = torch.randn(batch_size, 1, 32, 32), torch.randint(0, 10, (batch_size,))
    joint = joint_model(fp, OPTIONS).train()
    layers, fixed = searchable_layers(joint)
    init_steps(joint, layers, OPTIONS, images)
    joint_opt = make_optimizer(joint, JointConfig(lr=0.0, step_lr=0.0))  # lr 0: identical work, stable state
    rng = random.Random(0)
    plain = lsq_policy_model(fp, {n: (8, 8) if n in fixed else (4, 4) for n in [*layers, *fixed]}).train()
    plain_opt = make_optimizer(plain, JointConfig(lr=0.0, step_lr=0.0))
    criterion = torch.nn.CrossEntropyLoss()

    def plain_steps():
        for _ in range(len(OPTIONS) + 1):
            plain_opt.zero_grad(set_to_none=True)
            criterion(plain(images), labels).backward()
            plain_opt.step()

    fp_train = MODELS[model]().train()
    float_opt = torch.optim.Adam(fp_train.parameters(), lr=0.0)

    def float_step():
        float_opt.zero_grad(set_to_none=True)
        criterion(fp_train(images), labels).backward()
        float_opt.step()

    lsq = f"{len(OPTIONS) + 1} plain LSQ steps"
    times = median_times({lsq: plain_steps,
                          "1 joint step": lambda: joint_step(joint, layers, OPTIONS, images, labels, joint_opt, rng),
                          "1 plain float step": float_step},
                         repeats=repeats, warmup=1)
    print_ratio_table(f"{model}: joint step vs n + 1 plain LSQ steps (batch {batch_size}, 1 thread)",
                      {k: times[k] for k in (lsq, "1 joint step")}, lsq, target=1.1)
    print_ratio_table(f"{model}: joint step vs one plain float step = joint epoch in plain epochs",
                      {k: times[k] for k in ("1 plain float step", "1 joint step")}, "1 plain float step")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", choices=sorted(MODELS), default="mobilenet_v1_small")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench_step(args.model, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
