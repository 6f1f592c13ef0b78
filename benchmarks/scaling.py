"""How the cost of one FlowMCKernel iteration grows with walkers, dimension and flow size.

Times the compiled flowMC round (after compilation, median of repeats) on a standard Gaussian
target, varying one factor at a time from a base setting, for sampling (flow frozen) and for
warm-up (flow fitted every iteration). Prints milliseconds per iteration and the ratio to the
base setting.

Run::

    .venv/bin/python benchmarks/scaling.py
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from numpyro_ebm.flows import default_flow, flow_optimizer, split_flow
from numpyro_ebm.samplers.flowmc import FlowMCConfig, flowmc_round
from numpyro_ebm.samplers.warmup import init_adaptation

BASE = {"walkers": 128, "dim": 16, "flow_layers": 4, "nn_width": 32, "particles": 32}
REPEATS = 5


def potential(x: jax.Array) -> jax.Array:
    """Standard Gaussian potential."""
    return 0.5 * jnp.sum(x**2)


def time_round(walkers, dim, flow_layers, nn_width, particles, transformer, adapting) -> float:
    """Median milliseconds of one compiled round."""
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
    )
    position = jax.random.normal(jax.random.key(1), (walkers, dim))
    state = init_adaptation(position, params, optimizer.init(params), step_size=0.1, buffer_size=10)

    def round_(key, state):
        return flowmc_round(key, position, state, potential, static, config, adapting)

    step = jax.jit(round_)
    jax.block_until_ready(step(jax.random.key(2), state))
    seconds = []
    for repeat in range(REPEATS):
        start = time.perf_counter()
        jax.block_until_ready(step(jax.random.key(3 + repeat), state))
        seconds.append(time.perf_counter() - start)
    return 1e3 * statistics.median(seconds)


def main() -> None:
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


if __name__ == "__main__":
    main()
