"""Cost of one training step of each method, side by side in one run.

Builds each method of ``benchmarks/paper.py`` (``pcd`` with each negative sampler, and every
other objective) on one dataset with the paper benchmark's shared settings, compiles its training
program, then times ``--chunks`` chunks of steps and prints the median milliseconds per step
and the ratio to ``pcd`` with ``flowmc``. Compilation is excluded. Run::

    .venv/bin/python benchmarks/step_cost.py                      # two-modes-2to1, all methods
    .venv/bin/python benchmarks/step_cost.py --dataset gmm-16 --methods flowmc dsm nce

To time another commit's trainer, put a checkout of it first on the path
(``git worktree add /tmp/old REV``, then ``PYTHONPATH=/tmp/old .venv/bin/python
benchmarks/step_cost.py --methods flowmc ula nt``): a trainer that predates objectives has no
``TrainConfig.with_settings``, so the script then builds ``TrainConfig(sampler=...)``.
Compare timings only within one run or on a quiet machine: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax

from numpyro_ebm.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper import METHODS, SETTINGS


def config_for(method: str, dataset: str) -> TrainConfig:
    """The paper benchmark's shared settings for ``method``, one epoch long."""
    objective, own = METHODS[method]
    settings = {**SETTINGS["common"], **SETTINGS.get(dataset, {}), "num_epochs": 1}
    if not hasattr(TrainConfig, "with_settings"):  # a commit before objectives: pcd only
        return TrainConfig(**settings, **own)
    config = TrainConfig(objective=objective).with_settings(strict=False, **settings)
    return config.with_settings(**own, **SETTINGS["METHOD"].get(method, {}))


def seconds_per_step(trainer: Trainer, num_chunks: int) -> float:
    """Median over ``num_chunks`` timed chunks, after one compiling chunk."""
    state = trainer.init_state()
    state, _ = trainer._run_chunk(state, False)
    jax.block_until_ready(state)
    times = []
    for _ in range(num_chunks):
        start = time.perf_counter()
        state, _ = trainer._run_chunk(state, False)
        jax.block_until_ready(state)
        times.append((time.perf_counter() - start) / trainer.chunk_size)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="two-modes-2to1")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--chunks", type=int, default=5, help="timed chunks per method")
    args = parser.parse_args()
    costs = {}
    for method in args.methods:
        trainer = Trainer(args.dataset, config_for(method, args.dataset))
        costs[method] = seconds_per_step(trainer, args.chunks)
        print(f"{method:<10} {1e3 * costs[method]:8.2f} ms/step", flush=True)
    reference = costs.get("flowmc")
    print("\n| method | ms per step | × pcd-flowmc |\n|---|---|---|")
    for method, cost in costs.items():
        ratio = f"{cost / reference:.2f}" if reference else "—"
        print(f"| {method} | {1e3 * cost:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
