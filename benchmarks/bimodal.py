"""Bimodal benchmark: FlowMCKernel vs NumPyro NUTS vs the flowMC library, in one run.

Target: (2/3)·N(+5e, I) + (1/3)·N(−5e, I) in dimension d, e the unit diagonal (e = 1/sqrt(d)·1
is *not* used: the means are ±5 in every coordinate, as in the issue). Every method starts with
half of its chains in each mode. For each method the script prints the error of the + mode's
weight, the wall time including compilation, the ESS of the mode indicator (ArviZ, bulk), ESS per
second and the ratio of that to flowMC's.

Run (needs the ``bench`` extra for flowMC)::

    .venv/bin/python benchmarks/bimodal.py            # d = 2, 16, 64
    .venv/bin/python benchmarks/bimodal.py --dims 2   # one dimension

Compare numbers only within one run: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import time

import arviz
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from numpyro_ebm import FlowMCKernel

WEIGHT_PLUS = 2.0 / 3.0
MODE_OFFSET = 5.0


def log_density(x: jax.Array) -> jax.Array:
    """Log density of the target at one point ``x`` of shape ``(d,)``."""
    d = x.shape[-1]
    norm = -0.5 * d * jnp.log(2 * jnp.pi)
    plus = jnp.log(WEIGHT_PLUS) - 0.5 * jnp.sum((x - MODE_OFFSET) ** 2) + norm
    minus = jnp.log(1 - WEIGHT_PLUS) - 0.5 * jnp.sum((x + MODE_OFFSET) ** 2) + norm
    return jnp.logaddexp(plus, minus)


def model(dim: int) -> None:
    """The target as a NumPyro model with one latent site ``x``."""
    x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real_vector, (), (dim,)))
    numpyro.factor("target", log_density(x))


def starts(key: jax.Array, num_chains: int, dim: int) -> jax.Array:
    """Half of the chains near each mode."""
    signs = jnp.where(jnp.arange(num_chains) < num_chains // 2, 1.0, -1.0)
    return MODE_OFFSET * signs[:, None] + jax.random.normal(key, (num_chains, dim))


def summarise(name: str, draws: np.ndarray, seconds: float) -> dict:
    """Weight error and ESS of the mode indicator; ``draws`` has shape (chains, draws, d)."""
    indicator = (draws.mean(axis=-1) > 0).astype(float)
    weight = float(indicator.mean())
    ess = float(arviz.ess(indicator, method="bulk", chain_axis=0, draw_axis=1))
    ess = 0.0 if not np.isfinite(ess) else ess
    return {
        "method": name,
        "weight_error": abs(weight - WEIGHT_PLUS),
        "seconds": seconds,
        "ess": ess,
        "ess_per_second": ess / seconds,
    }


def run_flowmc_kernel(key, dim: int, args) -> dict:
    start = time.perf_counter()
    kernel = FlowMCKernel(
        model,
        num_particles=args.particles,
        num_local_steps=args.local_steps,
        flow_options={} if args.transformer == "auto" else {"transformer": args.transformer},
    )
    mcmc = MCMC(
        kernel,
        num_warmup=args.warmup,
        num_samples=args.samples,
        num_chains=args.walkers,
        chain_method="vectorized",
        progress_bar=False,
    )
    key_init, key_run = jax.random.split(key)
    mcmc.run(key_run, dim, init_params={"x": starts(key_init, args.walkers, dim)})
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    row = summarise("FlowMCKernel", draws, time.perf_counter() - start)
    stats = mcmc.get_extra_fields()
    row["global_accept"] = float(np.mean(stats["global_accept_prob"]))
    row["local_accept"] = float(np.mean(stats["accept_prob"]))
    return row


def run_nuts(key, dim: int, args) -> dict:
    start = time.perf_counter()
    mcmc = MCMC(
        NUTS(model),
        num_warmup=args.nuts_warmup,
        num_samples=args.nuts_samples,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    key_init, key_run = jax.random.split(key)
    mcmc.run(key_run, dim, init_params={"x": starts(key_init, 4, dim)})
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    return summarise("NumPyro NUTS", draws, time.perf_counter() - start)


def run_flowmc_library(key, dim: int, args) -> dict:
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler

    num_chains = 100
    start = time.perf_counter()
    key_bundle, key_sampler, key_init = jax.random.split(key, 3)
    bundle = RQSpline_MALA_Bundle(
        key_bundle,
        num_chains,
        dim,
        lambda x, data: log_density(x),
        n_local_steps=20,
        n_global_steps=20,
        n_training_loops=20,
        n_production_loops=10,
        n_epochs=5,
    )
    sampler = Sampler(
        n_dim=dim,
        n_chains=num_chains,
        rng_key=key_sampler,
        resource_strategy_bundles=bundle,
        checkpoint_interval=0,
    )
    sampler.sample(starts(key_init, num_chains, dim), {})
    draws = np.asarray(sampler.resources["positions_production"].data)
    return summarise("flowMC library", draws, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--walkers", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--transformer", default="auto", choices=["auto", "spline", "affine"])
    parser.add_argument("--nuts-warmup", type=int, default=500)
    parser.add_argument("--nuts-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["nuts", "flowmc"])
    args = parser.parse_args()

    print(
        f"{'d':>3} {'method':<15} {'|w-2/3|':>8} {'seconds':>8} {'ESS':>8} {'ESS/s':>8}"
        f" {'vs flowMC':>9}"
    )
    for dim in args.dims:
        key = jax.random.key(args.seed + dim)
        rows = [run_flowmc_kernel(key, dim, args)]
        if "nuts" not in args.skip:
            rows.append(run_nuts(key, dim, args))
        if "flowmc" not in args.skip:
            rows.append(run_flowmc_library(key, dim, args))
        reference = next((r for r in rows if r["method"] == "flowMC library"), None)
        for row in rows:
            ratio = (
                row["ess_per_second"] / reference["ess_per_second"]
                if reference and reference["ess_per_second"] > 0
                else float("nan")
            )
            print(
                f"{dim:>3} {row['method']:<15} {row['weight_error']:>8.4f} {row['seconds']:>8.1f}"
                f" {row['ess']:>8.0f} {row['ess_per_second']:>8.1f} {ratio:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
