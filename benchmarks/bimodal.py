"""Bimodal benchmark: FlowMCKernel vs NUTS, NumPyro's ensemble kernels, SMC and flowMC, in one run.

Target: (2/3)·N(+5e, I) + (1/3)·N(−5e, I) in dimension d, e the unit diagonal (e = 1/sqrt(d)·1
is *not* used: the means are ±5 in every coordinate, as in the issue). Every MCMC method starts
with half of its chains in each mode. For each method the script prints the error of the + mode's
weight, the wall time including compilation, the ESS of the mode indicator (ArviZ, bulk), ESS per
second and the ratio of that to flowMC's, and per dimension the ratio of FlowMCKernel's wall time
to NumPyro ESS's (issue 7, item 10: goal ≤ 2 at d = 2).

Methods: FlowMCKernel; NumPyro NUTS (4 chains); NumPyro's ensemble kernels ``ESS`` (ensemble
slice sampling) and ``AIES`` (affine-invariant stretch moves), with FlowMCKernel's walkers,
warm-up and draws; BlackJAX's adaptive tempered SMC (``--smc-particles`` particles tempered from
N(0, 10² I) with HMC moves; its ESS is the Kish ESS of the final weights, which ignores the
particles' correlation after resampling, so it is an upper bound); the flowMC library.

Run (needs the ``bench`` extra: flowMC, and BlackJAX whose rows are skipped without it)::

    .venv/bin/python benchmarks/bimodal.py            # d = 2, 16, 64
    .venv/bin/python benchmarks/bimodal.py --dims 2   # one dimension
    # Issue 7 item 10: d = 2, 128 walkers, 1000 warm-up + 1000 draws
    .venv/bin/python benchmarks/bimodal.py --dims 2 --num-walkers 128 --num-warmup 1000 \
        --num-samples 1000 --skip nuts flowmc

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
from numpyro.infer import AIES, ESS, MCMC, NUTS

from numpyro_ebm import FlowMCKernel

WEIGHT_PLUS = 2.0 / 3.0
MODE_OFFSET = 5.0

#: SMC starts from N(0, 10² I): it covers both modes at ±5 in every coordinate.
SMC_PRIOR_SD = 10.0
#: Relative ESS that sets each tempering increment (the value of BlackJAX's examples).
SMC_TARGET_ESS = 0.5
#: HMC moves per SMC step, leapfrog steps per move, and the step size at d = 1, scaled as
#: d^(-1/4) (the optimal scaling of HMC, Beskos et al. 2013): the target's modes have unit
#: variance and the tempered ones are wider, so these keep acceptance high in every dimension.
SMC_MCMC_STEPS = 10
SMC_LEAPFROG_STEPS = 10
SMC_STEP_SIZE = 0.5


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
        fit_patience=None if args.fit_patience < 0 else args.fit_patience,
        adapt_num_particles=args.adapt_particles,
        flow_options={} if args.transformer == "auto" else {"transformer": args.transformer},
    )
    mcmc = MCMC(
        kernel,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=args.num_walkers,
        chain_method="vectorized",
        progress_bar=False,
    )
    key_init, key_run = jax.random.split(key)
    mcmc.run(key_run, dim, init_params={"x": starts(key_init, args.num_walkers, dim)})
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    row = summarise("FlowMCKernel", draws, time.perf_counter() - start)
    stats = mcmc.get_extra_fields()
    row["global_accept"] = float(np.mean(stats["global_accept_prob"]))
    row["local_accept"] = float(np.mean(stats["accept_prob"]))
    adaptation = mcmc.last_state.adaptation
    chunks, all_chunks = int(adaptation.particle_chunks), adaptation.particle_accept.shape[0]
    row["method"] = f"FlowMCKernel {chunks}/{all_chunks}"  # particle chunks drawn after warm-up
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


def run_ensemble(name: str, kernel_class, key, dim: int, args) -> dict:
    """One of NumPyro's ensemble kernels with FlowMCKernel's walkers, warm-up and draws."""
    start = time.perf_counter()
    mcmc = MCMC(
        kernel_class(model),
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=args.num_walkers,
        chain_method="vectorized",
        progress_bar=False,
    )
    key_init, key_run = jax.random.split(key)
    mcmc.run(key_run, dim, init_params={"x": starts(key_init, args.num_walkers, dim)})
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    return summarise(name, draws, time.perf_counter() - start)


def run_smc(key, dim: int, args) -> dict | None:
    """BlackJAX's adaptive tempered SMC from N(0, 10² I); None if BlackJAX is not installed."""
    try:
        import blackjax
        from blackjax.smc import extend_params, resampling
    except ImportError:
        return None

    def log_prior(x):
        return -0.5 * jnp.sum((x / SMC_PRIOR_SD) ** 2)

    def log_likelihood(x):
        return log_density(x) - log_prior(x)

    start = time.perf_counter()
    smc = blackjax.adaptive_tempered_smc(
        log_prior,
        log_likelihood,
        blackjax.hmc.build_kernel(),
        blackjax.hmc.init,
        extend_params(
            {
                "step_size": SMC_STEP_SIZE * dim**-0.25,
                "inverse_mass_matrix": jnp.ones(dim),
                "num_integration_steps": SMC_LEAPFROG_STEPS,
            }
        ),
        resampling.systematic,
        SMC_TARGET_ESS,
        num_mcmc_steps=SMC_MCMC_STEPS,
    )
    key_init, key_run = jax.random.split(key)
    state = smc.init(SMC_PRIOR_SD * jax.random.normal(key_init, (args.smc_particles, dim)))

    @jax.jit
    def temper(state, key):
        def step(carry):
            state, key = carry
            key, key_step = jax.random.split(key)
            return smc.step(key_step, state)[0], key

        return jax.lax.while_loop(lambda carry: carry[0].tempering_param < 1, step, (state, key))

    state, _ = temper(state, key_run)
    weights = np.asarray(state.weights, dtype=float)
    indicator = (np.asarray(state.particles).mean(axis=-1) > 0).astype(float)
    seconds = time.perf_counter() - start
    ess = 1.0 / float(np.sum(weights**2))  # Kish
    return {
        "method": "BlackJAX SMC",
        "weight_error": abs(float(np.sum(weights * indicator)) - WEIGHT_PLUS),
        "seconds": seconds,
        "ess": ess,
        "ess_per_second": ess / seconds,
    }


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


def warm_up_jax() -> None:
    """Compile JAX's own first-use programs (key splitting, sampling) outside every timing.

    Whichever method ran first would otherwise pay about a second for them.
    """
    key = jax.random.split(jax.random.key(0))[0]
    jax.block_until_ready(jax.random.normal(key, (2,)) + jax.random.uniform(key, (2,)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--num-walkers", "--walkers", type=int, default=256)
    parser.add_argument("--num-warmup", "--warmup", type=int, default=200)
    parser.add_argument("--num-samples", "--samples", type=int, default=200)
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--transformer", default="auto", choices=["auto", "spline", "affine"])
    parser.add_argument(
        "--adapt-particles",
        action="store_true",
        help="FlowMCKernel(adapt_num_particles=True): fewer particles after warm-up",
    )
    parser.add_argument(
        "--fit-patience",
        type=int,
        default=50,
        help="FlowMCKernel's fit_patience (default: the kernel's, 50); -1: None",
    )
    parser.add_argument("--nuts-warmup", type=int, default=500)
    parser.add_argument("--nuts-samples", type=int, default=1000)
    parser.add_argument("--smc-particles", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["nuts", "ess", "aies", "smc", "flowmc"]
    )
    args = parser.parse_args()
    warm_up_jax()

    print(
        f"{'d':>3} {'method':<18} {'|w-2/3|':>8} {'seconds':>8} {'ESS':>8} {'ESS/s':>8}"
        f" {'vs flowMC':>9}"
    )
    for dim in args.dims:
        key = jax.random.key(args.seed + dim)
        rows = [run_flowmc_kernel(key, dim, args)]
        if "nuts" not in args.skip:
            rows.append(run_nuts(key, dim, args))
        if "ess" not in args.skip:
            rows.append(run_ensemble("NumPyro ESS", ESS, key, dim, args))
        if "aies" not in args.skip:
            rows.append(run_ensemble("NumPyro AIES", AIES, key, dim, args))
        if "smc" not in args.skip:
            row = run_smc(key, dim, args)
            if row is None:
                print(f"{dim:>3} BlackJAX SMC skipped: blackjax is not installed (bench extra)")
            else:
                rows.append(row)
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
                f"{dim:>3} {row['method']:<18} {row['weight_error']:>8.4f} {row['seconds']:>8.1f}"
                f" {row['ess']:>8.0f} {row['ess_per_second']:>8.1f} {ratio:>9.2f}",
                flush=True,
            )
        ensemble_slice = next((r for r in rows if r["method"] == "NumPyro ESS"), None)
        if ensemble_slice is not None:
            print(
                f"{dim:>3} FlowMCKernel wall time / NumPyro ESS's: "
                f"{rows[0]['seconds'] / ensemble_slice['seconds']:.2f} (issue 7 goal at d = 2: ≤ 2)"
            )


if __name__ == "__main__":
    main()
