"""Default flow's transformer: affine coupling against rational-quadratic splines, in one run.

FlowMCKernel's default flow is affine coupling in every dimension (splines were the default up
to d = 8). This script measures what that choice costs in accuracy and saves in time on
low-dimensional targets that a spline is meant to be better at:

- ``ring``: eight Gaussian modes (sd 0.3) on a circle of radius 4, weights 1:2:...:8, walkers
  from NumPyro's ``init_to_uniform(radius=6)``; error = total variation between the modes'
  shares of the draws (nearest centre) and their weights;
- ``amplitude``: notebook 01's posterior (the sign of an amplitude seen through its square),
  whose mode theta < 0 holds 0.18 of the mass, with 32 walkers and 100 warm-up rounds (the
  notebook's fast mode); error = |share(theta > 0) - 0.820|;
- ``banana``: x ~ N(0, 3²), y | x ~ N(0.3 x² - 2, 0.5²); error = max over x, y of
  |mean - truth| / sd.

Each run reports the error, the mean global acceptance of the kept rounds and the wall time
(compilation included). The affine runs go first, so they, not the splines, pay the process's
one-off compilations.

Run::

    .venv/bin/python benchmarks/flow_transformers.py                 # seeds 0-3
    .venv/bin/python benchmarks/flow_transformers.py --seeds 0 --targets ring
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, init_to_sample, init_to_uniform

from numpyro_ebm import FlowMCKernel

RING_MODES = 8
RING_RADIUS, RING_SD = 4.0, 0.3
RING_CENTRES = RING_RADIUS * np.stack(
    [np.cos(2 * np.pi * np.arange(RING_MODES) / RING_MODES),
     np.sin(2 * np.pi * np.arange(RING_MODES) / RING_MODES)], axis=1,
)  # fmt: skip
RING_WEIGHTS = np.arange(1, RING_MODES + 1) / np.sum(np.arange(1, RING_MODES + 1))

# Notebook 01's data: 20 noisy squares of an amplitude and 2 noisy direct probes of it.
AMPLITUDE_SQUARES = np.array([
    1.48, 1.40, 1.63, 1.47, 1.28, 1.55, 1.83, 1.72, 1.23, 1.06,
    1.25, 1.45, 0.74, 1.37, 1.07, 1.22, 1.28, 1.35, 1.56, 1.75,
])  # fmt: skip
AMPLITUDE_PROBES = np.array([0.42, 2.16])
AMPLITUDE_POSITIVE_WEIGHT = 0.820  # quadrature in the notebook

BANANA_X_SD, BANANA_CURVATURE, BANANA_SHIFT, BANANA_Y_SD = 3.0, 0.3, -2.0, 0.5


def ring() -> None:
    x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real_vector, (), (2,)))
    squared = jnp.sum((x - RING_CENTRES) ** 2, axis=-1) / RING_SD**2
    numpyro.factor("ring", jax.nn.logsumexp(jnp.log(RING_WEIGHTS) - 0.5 * squared))


def amplitude() -> None:
    theta = numpyro.sample("theta", dist.Normal(0.0, 3.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(theta**2, sigma), obs=AMPLITUDE_SQUARES)
    numpyro.sample("z", dist.Normal(theta, 2.0), obs=AMPLITUDE_PROBES)


def banana() -> None:
    x = numpyro.sample("x", dist.Normal(0.0, BANANA_X_SD))
    numpyro.sample("y", dist.Normal(BANANA_CURVATURE * x**2 + BANANA_SHIFT, BANANA_Y_SD))


def ring_error(samples: dict) -> float:
    x = np.asarray(samples["x"])
    nearest = np.argmin(((x[:, None, :] - RING_CENTRES) ** 2).sum(-1), axis=1)
    shares = np.bincount(nearest, minlength=RING_MODES) / len(nearest)
    return 0.5 * float(np.abs(shares - RING_WEIGHTS).sum())


def amplitude_error(samples: dict) -> float:
    return abs(float(np.mean(np.asarray(samples["theta"]) > 0)) - AMPLITUDE_POSITIVE_WEIGHT)


def banana_error(samples: dict) -> float:
    x_sd = BANANA_X_SD
    y_mean = BANANA_CURVATURE * x_sd**2 + BANANA_SHIFT
    # Var(y) = a² Var(x²) + sd_y² with Var(x²) = 2 sd_x⁴ for centred x.
    y_sd = np.sqrt(2 * BANANA_CURVATURE**2 * x_sd**4 + BANANA_Y_SD**2)
    return max(
        abs(float(np.mean(samples["x"]))) / x_sd,
        abs(float(np.mean(samples["y"])) - y_mean) / y_sd,
    )


class Target(NamedTuple):
    """A model, its error measure and the walkers and warm-up it gets."""

    model: Callable
    error: Callable[[dict], float]
    error_name: str
    init_strategy: Callable
    num_walkers: int
    num_warmup: int


TARGETS = {
    "ring": Target(ring, ring_error, "TV of mode shares", init_to_uniform(radius=6), 128, 500),
    "amplitude": Target(amplitude, amplitude_error, "|w - 0.82|", init_to_sample, 32, 100),
    "banana": Target(banana, banana_error, "max |Δmean|/sd", init_to_sample, 128, 500),
}


def run(target: Target, transformer: str, seed: int, num_samples: int) -> tuple[float, ...]:
    """(error, mean global acceptance, seconds) of one FlowMCKernel run."""
    start = time.perf_counter()
    kernel = FlowMCKernel(
        target.model,
        init_strategy=target.init_strategy,
        flow_options={"transformer": transformer},
    )
    mcmc = MCMC(kernel, num_warmup=target.num_warmup, num_samples=num_samples,
                num_chains=target.num_walkers, chain_method="vectorized",
                progress_bar=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short runs may warn about mixing; errors show it
        mcmc.run(jax.random.PRNGKey(seed))
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    seconds = time.perf_counter() - start
    accept = float(np.mean(mcmc.get_extra_fields()["global_accept_prob"]))
    return target.error(samples), accept, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--num-samples", type=int, default=500)
    args = parser.parse_args()
    print(f"{'target':10s} {'error':18s} {'seed':>4s} {'affine':>8s} {'spline':>8s}   "
          "global acc. affine / spline   seconds affine / spline")  # fmt: skip
    for name in args.targets:
        target = TARGETS[name]
        for seed in args.seeds:
            affine = run(target, "affine", seed, args.num_samples)
            spline = run(target, "spline", seed, args.num_samples)
            print(f"{name:10s} {target.error_name:18s} {seed:4d} {affine[0]:8.4f} "
                  f"{spline[0]:8.4f}   {affine[1]:.3f} / {spline[1]:.3f}"
                  f"{'':17s}{affine[2]:5.1f} / {spline[2]:5.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
