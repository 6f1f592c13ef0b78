"""log Z of energies with a known normalising constant, from the flow ``FlowMCKernel`` fitted.

Issue 8's goal: estimates within 3 standard errors of the truth, with a standard error of at
most 0.05 nats, at d ≤ 64. Each target is a normalised density ``p`` of
:func:`numpyro_ebm.datasets.get_dataset` (mixtures with unequal or equal weights, d = 2…64)
or a shifted, correlated Gaussian, turned into an energy ``U(x) = -log p(x - shift) - log Z``
with a chosen ``log Z`` (so nothing is normalised by accident) and a shift of 10 per
coordinate (away from the kernel's initial box). ``FlowMCKernel`` with its defaults warms up
on ``U`` and its flow is the proposal of :func:`numpyro_ebm.likelihood.log_normalizer`
(importance sampling, AIS when the importance ESS is below 5%).

Run::

    PYTHONPATH=. .venv/bin/python benchmarks/_log_z.py          # the table (a few minutes)
    PYTHONPATH=. .venv/bin/python benchmarks/_log_z.py --targets two-modes-2to1 --num-warmup 200
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC

from numpyro_ebm import FlowMCKernel
from numpyro_ebm.datasets import get_dataset
from numpyro_ebm.likelihood import log_normalizer

#: The known log Z every target is given (arbitrary, not 0).
TRUE_LOG_Z = 3.7
#: Every target is moved by this much in every coordinate.
SHIFT = 10.0
#: Density datasets used as targets, and the dimensions of the correlated Gaussians.
MIXTURES = ("two-modes-2to1", "four-modes", "gmm-16", "gmm-64")
GAUSSIAN_DIMS = (8, 64)
#: Walkers of the kernel (its initial positions are uniform on (-2, 2)^d).
NUM_WALKERS = 128
#: Importance draws per estimate.
NUM_DRAWS = 16_384
#: Pass marks of issue 8: |error| < 3 standard errors, standard error ≤ 0.05.
NUM_STDERR, MAX_STDERR = 3.0, 0.05


def correlated_gaussian_log_prob(dim: int, seed: int = 0) -> Callable[[jax.Array], jax.Array]:
    """The normalised log density of N(μ, Σ) with Σ's eigenvalues in about [0.5, 4]."""
    rng = np.random.default_rng(seed)
    mean = jnp.asarray(rng.normal(size=dim), jnp.float32)
    factor = rng.normal(size=(dim, dim)) / math.sqrt(dim)
    covariance = 0.5 * np.eye(dim) + 0.5 * factor @ factor.T
    precision = jnp.asarray(np.linalg.inv(covariance), jnp.float32)
    log_norm = -0.5 * dim * math.log(2 * math.pi) - 0.5 * np.linalg.slogdet(covariance)[1]

    def log_prob(x: jax.Array) -> jax.Array:
        residual = x - mean
        return log_norm - 0.5 * residual @ precision @ residual

    return log_prob


def targets(names: list[str]) -> dict[str, tuple[int, Callable[[jax.Array], jax.Array]]]:
    """``name -> (dim, normalised log density of one point)`` of the named targets."""
    out = {}
    for name in names:
        if name.startswith("gaussian-"):
            dim = int(name.removeprefix("gaussian-"))
            out[name] = (dim, correlated_gaussian_log_prob(dim))
        else:
            dataset = get_dataset(name)
            out[name] = (dataset.dim, lambda x, f=dataset.log_prob: f(x[None])[0])
    return out


def estimate_row(name: str, dim: int, log_prob, *, num_warmup: int, seed: int) -> dict:
    """Warm ``FlowMCKernel`` up on the shifted target and estimate its log Z from the flow."""

    def potential_fn(x):
        return -log_prob(x - SHIFT) - TRUE_LOG_Z

    start = time.perf_counter()
    kernel = FlowMCKernel(potential_fn=potential_fn)
    key_init, key_run, key_z = jax.random.split(jax.random.key(seed), 3)
    init = jax.random.uniform(key_init, (NUM_WALKERS, dim), minval=-2.0, maxval=2.0)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=1, num_chains=NUM_WALKERS,
                chain_method="vectorized", progress_bar=False)  # fmt: skip
    mcmc.run(key_run, init_params=init)
    flow = kernel.get_flow(mcmc.last_state)
    estimate = log_normalizer(key_z, potential_fn, flow, NUM_DRAWS)
    error = estimate.log_normalizer - TRUE_LOG_Z
    return dict(
        target=name,
        dim=dim,
        estimate=estimate.log_normalizer,
        stderr=estimate.stderr,
        error=error,
        ess=estimate.ess,
        method=estimate.method,
        seconds=time.perf_counter() - start,
        passed=bool(abs(error) < NUM_STDERR * estimate.stderr and estimate.stderr <= MAX_STDERR),
    )


def log_z_rows(names: list[str], num_warmup: int, seed: int) -> list[dict]:
    """Print and return the table's rows."""
    print(f"\nlog Z (true {TRUE_LOG_Z}) from FlowMCKernel's flow, {NUM_DRAWS} draws, targets "
          f"shifted by {SHIFT:g} per coordinate; pass: |error| < {NUM_STDERR:g} stderr and "
          f"stderr ≤ {MAX_STDERR}")  # fmt: skip
    print("\n| target | d | log Ẑ | stderr | error / stderr | ESS | method | wall s | pass |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---|")
    rows = []
    for name, (dim, log_prob) in targets(names).items():
        row = estimate_row(name, dim, log_prob, num_warmup=num_warmup, seed=seed)
        rows.append(row)
        verdict = "yes" if row["passed"] else "NO"
        print(f"| {name} | {dim} | {row['estimate']:.4f} | {row['stderr']:.4f} | "
              f"{row['error'] / row['stderr']:+.2f} | {row['ess']:.0f} | {row['method']} | "
              f"{row['seconds']:.0f} | {verdict} |", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [*MIXTURES, *(f"gaussian-{d}" for d in GAUSSIAN_DIMS)]
    parser.add_argument("--targets", nargs="+", default=default)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    log_z_rows(args.targets, args.num_warmup, args.seed)


if __name__ == "__main__":
    main()
