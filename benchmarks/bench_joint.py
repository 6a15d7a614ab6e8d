"""How fast are LIMPQ's joint training step, the ILP search and the notebook-10 panel update?

    python benchmarks/bench_joint.py [--repeats 5] [--batch-size 64]

1. One joint step (n = 5 uniform passes + 1 random pass, one optimizer step) against n + 1 plain LSQ
   steps of the same network at one bit-width, in the same run: target ratio <= 1.1.
2. The ILP on the shipped MobileNetV1-small indicators (26 layers x 25 pairs) and on a synthetic
   27-layer instance: median solve time (wall and CPU), target < 0.1 s.
3. One panel update end to end (solve + draw the two bar charts to pixels), target < 0.2 s.
One torch thread. On a shared machine wall times drift; the ratio in (1) is what to read.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_times, print_ratio_table  # noqa: E402
from mpqlab.cost import layer_table  # noqa: E402
from mpqlab.data import repo_data_dir  # noqa: E402
from mpqlab.limpq.indicators import load_indicators, synthetic_indicators  # noqa: E402
from mpqlab.limpq.joint import (  # noqa: E402
    JointConfig, init_steps, joint_model, joint_step, lsq_policy_model, make_optimizer, searchable_layers,
)
from mpqlab.limpq.search import solve_policy, uniform_budget  # noqa: E402
from mpqlab.models import mobilenet_v1_small  # noqa: E402
from mpqlab.widgets.search_panel import render_search  # noqa: E402

OPTIONS = [2, 3, 4, 5, 6]


def bench_step(batch_size: int, repeats: int) -> None:
    torch.manual_seed(0)
    fp = mobilenet_v1_small().eval()
    images, labels = torch.randn(batch_size, 1, 32, 32), torch.randint(0, 10, (batch_size,))
    joint = joint_model(fp, OPTIONS).train()
    layers, _ = searchable_layers(joint)
    init_steps(joint, layers, OPTIONS, images)
    joint_opt = make_optimizer(joint, JointConfig(lr=0.0, step_lr=0.0))  # lr 0: identical work, stable state
    rng = random.Random(0)
    plain = lsq_policy_model(fp, {n: (4, 4) for n in layer_table(fp, (1, 1, 32, 32)).index}).train()
    plain_opt = make_optimizer(plain, JointConfig(lr=0.0, step_lr=0.0))
    criterion = torch.nn.CrossEntropyLoss()

    def plain_steps():
        for _ in range(len(OPTIONS) + 1):
            plain_opt.zero_grad(set_to_none=True)
            criterion(plain(images), labels).backward()
            plain_opt.step()

    times = median_times({f"{len(OPTIONS) + 1} plain LSQ steps": plain_steps,
                          "1 joint step": lambda: joint_step(joint, layers, OPTIONS, images, labels, joint_opt, rng)},
                         repeats=repeats, warmup=1)
    print_ratio_table(f"joint step vs n + 1 plain LSQ steps (batch {batch_size}, 1 thread)", times,
                      f"{len(OPTIONS) + 1} plain LSQ steps", target=1.1)


def bench_solve(repeats: int) -> None:
    shipped = repo_data_dir() / "results" / "limpq_mobilenet_v1_small.json"
    cases = {"synthetic 27 layers": synthetic_indicators(27, OPTIONS, seed=0)}
    if shipped.is_file():
        cases["MobileNetV1-small (shipped)"] = load_indicators(shipped)
    print("\nILP solve time (target < 0.1 s), median over budgets W2.5A2.5 .. W5A5")
    for name, ind in cases.items():
        budgets = [uniform_budget(ind, 4, 4) * (b / 4) ** 2 for b in (2.5, 3.0, 3.5, 4.0, 4.5, 5.0)]
        solve_policy(ind, OPTIONS, budgets[0])  # warm-up
        walls, cpus = [], []
        for _ in range(repeats):
            for budget in budgets:
                w, c = time.perf_counter(), time.process_time()
                solve_policy(ind, OPTIONS, budget)
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        print(f"  {name:28s} wall {wall * 1e3:7.1f} ms  CPU {cpu * 1e3:7.1f} ms  "
              f"{'ok' if cpu < 0.1 else 'SLOWER than'} target (CPU)")
        if name.startswith("MobileNet"):
            bench_panel(ind, budgets, repeats)


def bench_panel(ind, budgets, repeats: int) -> None:
    kinds = {n: "depthwise" if n.startswith("dw") else "pointwise" for n in ind.layer_names}
    walls = []
    for _ in range(repeats):
        for budget in budgets:
            start = time.perf_counter()
            _, fig, _ = render_search(ind, kinds, budget, None, OPTIONS)
            fig.canvas.draw()  # rasterise, as the notebook does when it shows the figure
            walls.append(time.perf_counter() - start)
            plt.close(fig)
    wall = statistics.median(walls)
    print(f"  panel update (solve + draw)   wall {wall * 1e3:7.1f} ms  {'ok' if wall < 0.2 else 'SLOWER than'} "
          f"target 200 ms")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench_step(args.batch_size, args.repeats)
    bench_solve(args.repeats)


if __name__ == "__main__":
    main()
