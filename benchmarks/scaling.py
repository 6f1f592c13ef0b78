"""How the cost of FlowMCKernel and of the trainer grows with walkers, dimension, flow, devices.

``factors`` times the compiled flowMC round (after compilation, median of repeats) on a
standard Gaussian target, varying one factor at a time from a base setting, for sampling (flow
frozen) and for warm-up (flow fitted every iteration); it prints milliseconds per iteration and
the ratio to the base setting. ``devices`` times the same round with the walkers split over
1, 2, 4, ... devices (walkers x dimension x devices, in draws per second), and ``trainer`` the
trainer's steps per second on the same device counts (:mod:`numpyro_ebm.training.mesh`).

On CPU the devices are fake (``--devices N`` splits this machine's cores into N XLA devices):
the tables show that the partitioning runs and what it costs, not a speed-up, since the fake
devices share the same cores. On GPUs the same script measures real scaling.

Run::

    .venv/bin/python benchmarks/scaling.py                      # factors
    .venv/bin/python benchmarks/scaling.py devices trainer --devices 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from numpyro_ebm.flows import default_flow, flow_optimizer, split_flow
from numpyro_ebm.samplers.flowmc import FlowMCConfig, flowmc_round
from numpyro_ebm.samplers.warmup import init_adaptation
from numpyro_ebm.training import TrainConfig, Trainer
from numpyro_ebm.training.mesh import data_mesh, put_on_mesh, split_leading_axis

BASE = {"walkers": 128, "dim": 16, "flow_layers": 4, "nn_width": 32, "particles": 32}
REPEATS = 5


def potential(x: jax.Array) -> jax.Array:
    """Standard Gaussian potential."""
    return 0.5 * jnp.sum(x**2)


def time_round(
    walkers, dim, flow_layers, nn_width, particles, transformer, adapting, num_devices=None
) -> float:
    """Median milliseconds of one compiled round (walkers split over ``num_devices``)."""
    mesh = None if num_devices is None else data_mesh(num_devices)
    split = None if mesh is None or mesh.size == 1 else split_leading_axis(mesh)
    flow = default_flow(
        jax.random.key(0),
        dim,
        flow_layers=flow_layers,
        nn_width=nn_width,
        transformer=transformer,
    )
    params, static = split_flow(flow)
    optimizer = flow_optimizer()
    config = FlowMCConfig(
        num_local_steps=5,
        global_move="isir",
        num_particles=particles,
        chunk_size=particles - 1,
        target_accept_prob=0.574,
        fit_flow=True,
        fit_every=1,
        num_fit_steps=10,
        fit_batch_size=256,
        optimizer=optimizer,
        batch_sharding=split,
    )
    position = jax.random.normal(jax.random.key(1), (walkers, dim))
    if mesh is not None:
        position = put_on_mesh(position, split_leading_axis(mesh))
    state = init_adaptation(position, params, optimizer.init(params), step_size=0.1, buffer_size=10)

    def round_(key, position, state):
        return flowmc_round(key, position, state, potential, static, config, adapting)

    step = jax.jit(round_)
    jax.block_until_ready(step(jax.random.key(2), position, state))
    seconds = []
    for repeat in range(REPEATS):
        start = time.perf_counter()
        jax.block_until_ready(step(jax.random.key(3 + repeat), position, state))
        seconds.append(time.perf_counter() - start)
    return 1e3 * statistics.median(seconds)


def device_counts(max_devices: int) -> list[int]:
    """1, 2, 4, ... up to the devices there are."""
    available = min(max_devices, len(jax.devices()))
    return [n for n in (1, 2, 4, 8, 16) if n <= available]


def devices_sweep(max_devices: int) -> None:
    """Kernel draws per second (one draw per walker per round), walkers x dimension x devices."""
    counts = device_counts(max_devices)
    print(f"\nFlowMCKernel round (affine flow, sampling), thousand draws/s on {counts} devices")
    print("| walkers | dim | " + " | ".join(f"{n} dev" for n in counts) + " |")
    print("|---|---|" + "---|" * len(counts))
    for walkers in (256, 4096):
        for dim in (2, 64):
            cells = []
            for n in counts:
                ms = time_round(
                    **{**BASE, "walkers": walkers, "dim": dim},
                    transformer="affine",
                    adapting=False,
                    num_devices=n,
                )
                cells.append(f"{walkers / ms:.1f}")
            print(f"| {walkers} | {dim} | " + " | ".join(cells) + " |", flush=True)


#: The trainer's benchmark run: gmm-16's defaults for d > 2 (HIGH_DIMENSION_SETTINGS), shorter.
TRAINER_RUN = dict(num_epochs=2, steps_per_epoch=20, num_data=4096, validation_fraction=0)


def trainer_steps_per_second(dataset: str, num_devices: int, **settings) -> float:
    """Steps per second of the second epoch (the first one compiles)."""
    config = TrainConfig.for_dimension(16).with_settings(**(TRAINER_RUN | settings))
    trainer = Trainer(dataset, config.replace(devices=num_devices))
    result = trainer.fit(progress_bar=False)
    return config.steps_per_epoch / result.history[-1]["time_s"]


def trainer_sweep(max_devices: int) -> None:
    """The trainer's steps per second (pcd with flowMC negatives) on 1, 2, 4, ... devices."""
    counts = device_counts(max_devices)
    print(f"\ntrainer (pcd, flowMC negatives), steps/s on {counts} devices")
    print("| dataset | walkers | " + " | ".join(f"{n} dev" for n in counts) + " |")
    print("|---|---|" + "---|" * len(counts))
    for dataset, walkers in (("gmm-16", 128), ("gmm-16", 1024)):
        cells = [f"{trainer_steps_per_second(dataset, n, num_walkers=walkers):.1f}" for n in counts]
        print(f"| {dataset} | {walkers} | " + " | ".join(cells) + " |", flush=True)


def goal_run(max_devices: int) -> None:
    """The issue's GPU goal's configuration: the trainer at d = 64 with 4096 walkers, 1 device.

    Run it on the CPU and on a GPU; the goal is a GPU at least 20 times the 2-core CPU.
    """
    del max_devices  # one device: the goal compares one GPU with the CPU
    steps = trainer_steps_per_second(
        "gmm-64", 1, num_walkers=4096, steps_per_epoch=5, fit_batch_size=256
    )
    print(f"\ntrainer at d = 64, 4096 walkers ({jax.devices()[0].platform}): {steps:.2f} steps/s")


def factors_sweep() -> None:
    """One factor at a time from the base setting, for each flow and phase."""
    sweeps = {
        "walkers": [64, 128, 256, 512],
        "dim": [2, 16, 64],
        "particles": [8, 32, 128],
        "flow_layers": [2, 4, 8],
        "nn_width": [16, 32, 64],
    }
    print(f"base: {BASE}; ms per iteration (ratio to base)")
    for transformer in ("affine", "spline"):
        for adapting in (False, True):
            phase = "warm-up (fit)" if adapting else "sampling"
            base_ms = time_round(**BASE, transformer=transformer, adapting=adapting)
            print(f"\n{transformer} flow, {phase}: base {base_ms:.1f} ms")
            for factor, values in sweeps.items():
                cells = []
                for value in values:
                    ms = time_round(
                        **{**BASE, factor: value}, transformer=transformer, adapting=adapting
                    )
                    cells.append(f"{value}: {ms:.1f} ({ms / base_ms:.2f}x)")
                print(f"  {factor:<12} " + "  ".join(cells), flush=True)


def main() -> None:
    """Run the sweeps named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweeps", nargs="*", default=["factors"], help="factors devices trainer goal"
    )
    parser.add_argument("--devices", type=int, default=1, help="fake CPU devices, if on CPU")
    args = parser.parse_args()
    if args.devices > 1:  # only CPU reads it, before its first use
        jax.config.update("jax_num_cpu_devices", args.devices)
    print(f"JAX {jax.__version__}, {jax.devices()}")
    for name in args.sweeps:
        if name == "factors":
            factors_sweep()
        else:
            sweeps = {"devices": devices_sweep, "trainer": trainer_sweep, "goal": goal_run}
            sweeps[name](args.devices)


if __name__ == "__main__":
    main()
