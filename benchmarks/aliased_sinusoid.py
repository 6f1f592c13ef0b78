"""Aliased periods of a noisy sinusoid: FlowMCKernel's frequency-mode weights against a grid.

Forty nightly observations over 60 days of ``y = A sin(2π f t + φ) + c + N(0, 1)`` (true
f = 0.3 per day) make the posterior of f a comb of narrow aliases at 0.3, 0.7, 1.3 and 1.7 per
day. With a Rayleigh(2) prior on A (so that ``(A sin φ, A cos φ)`` is Gaussian) and c ~ N(0, 1),
the marginal likelihood of f is Gaussian in closed form: the exact alias weights come from a
grid of f (0.321, 0.069, 0.601 and 0.008).

With the phase written as NumPyro users write it, ``φ ~ Uniform(0, 2π)``, the weights come out
wrong, and with global moves only (``--num-local-steps 0``) without a warning from the kernel:
the 1.3 alias's phase is about 5°, so a third of that alias lies just below 2π and the rest just
above 0. In the unconstrained coordinate of ``φ`` (a logit) those are two far-apart tails, and
the walkers there are sampled as two modes whose relative weight the flow gets wrong.
``check_run`` reports it (draws piled at both ends of an interval). ``--parametrisation
coefficients`` samples ``(a, b) = (A cos φ, A sin φ) ~ N(0, 2² I)`` instead, the same
posterior of f on a space without edges. The script prints each seed's weights, the largest
error, the global acceptance and the warnings.

Run::

    .venv/bin/python benchmarks/aliased_sinusoid.py --seeds 0 1 2 3
    .venv/bin/python benchmarks/aliased_sinusoid.py --parametrisation coefficients
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC

from numpyro_ebm import FlowMCKernel
from numpyro_ebm.health import check_run

#: Frequency windows (per day) of the four aliases whose weights are compared.
ALIASES = ((0.2, 0.4), (0.6, 0.8), (1.2, 1.4), (1.6, 1.8))
AMPLITUDE_PRIOR_SD = 2.0  # Rayleigh(2): A sin φ and A cos φ are N(0, 2²)
NOISE_SD = 1.0


def observations(seed: int = 0, num_nights: int = 40, span: int = 60):
    """Nightly times (with 0.1-day jitter) and values of a sinusoid of frequency 0.3 per day."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.choice(span, num_nights, replace=False)).astype(float)
    t = t + 0.1 * rng.uniform(size=num_nights)
    y = np.sin(2 * np.pi * 0.3 * t + 1.0) + 0.2 + NOISE_SD * rng.normal(size=num_nights)
    return t, y


def model(t, y=None):
    f = numpyro.sample("f", dist.Uniform(0.05, 2.0))
    amplitude = numpyro.sample("A", dist.Weibull(AMPLITUDE_PRIOR_SD * np.sqrt(2.0), 2.0))
    phase = numpyro.sample("phi", dist.Uniform(0.0, 2 * jnp.pi))
    offset = numpyro.sample("c", dist.Normal(0.0, 1.0))
    mean = amplitude * jnp.sin(2 * jnp.pi * f * t + phase) + offset
    with numpyro.plate("obs", t.shape[0]):
        numpyro.sample("y", dist.Normal(mean, NOISE_SD), obs=y)


def coefficients_model(t, y=None):
    """The same posterior of f, with ``(A cos φ, A sin φ)`` sampled as two Normal coefficients."""
    f = numpyro.sample("f", dist.Uniform(0.05, 2.0))
    a = numpyro.sample("a", dist.Normal(0.0, AMPLITUDE_PRIOR_SD))
    b = numpyro.sample("b", dist.Normal(0.0, AMPLITUDE_PRIOR_SD))
    offset = numpyro.sample("c", dist.Normal(0.0, 1.0))
    mean = a * jnp.sin(2 * jnp.pi * f * t) + b * jnp.cos(2 * jnp.pi * f * t) + offset
    with numpyro.plate("obs", t.shape[0]):
        numpyro.sample("y", dist.Normal(mean, NOISE_SD), obs=y)


MODELS = {"phase": model, "coefficients": coefficients_model}


def exact_alias_weights(t, y, num_points: int = 20001) -> np.ndarray:
    """Alias weights from the closed-form marginal likelihood of f on a grid (uniform prior)."""
    grid = np.linspace(0.05, 2.0, num_points)
    prior_cov = np.diag([AMPLITUDE_PRIOR_SD**2, AMPLITUDE_PRIOR_SD**2, 1.0])
    log_marginal = np.empty(num_points)
    for i, f in enumerate(grid):
        design = np.stack(
            [np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t), np.ones_like(t)], 1
        )
        cov = NOISE_SD**2 * np.eye(len(t)) + design @ prior_cov @ design.T
        log_marginal[i] = -0.5 * (np.linalg.slogdet(cov)[1] + y @ np.linalg.solve(cov, y))
    density = np.exp(log_marginal - log_marginal.max())
    density /= density.sum()
    return np.array([density[(grid > lo) & (grid < hi)].sum() for lo, hi in ALIASES])


def alias_weights(f: np.ndarray) -> np.ndarray:
    return np.array([np.mean((f > lo) & (f < hi)) for lo, hi in ALIASES])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--num-walkers", type=int, default=128)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--buffer-size", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--num-local-steps", type=int, default=5)
    parser.add_argument("--parametrisation", choices=sorted(MODELS), default="phase")
    args = parser.parse_args()
    t, y = observations()
    exact = exact_alias_weights(t, y)
    print(f"exact weights of the aliases at 0.3, 0.7, 1.3, 1.7 per day: {np.round(exact, 3)}")
    for seed in args.seeds:
        start = time.perf_counter()
        kernel = FlowMCKernel(
            MODELS[args.parametrisation],
            buffer_size=args.buffer_size,
            learning_rate=args.learning_rate,
            num_local_steps=args.num_local_steps,
        )
        options = dict(num_warmup=args.num_warmup, num_samples=args.num_samples, progress_bar=False)
        mcmc = MCMC(kernel, num_chains=args.num_walkers, chain_method="vectorized", **options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(t), jnp.asarray(y))
        weights = alias_weights(np.asarray(mcmc.get_samples()["f"]))
        health = check_run(mcmc)
        ours = sum("FlowMCKernel" in str(w.message) for w in caught)
        print(
            f"seed {seed}: weights {np.round(weights, 3)}, max error "
            f"{np.max(np.abs(weights - exact)):.3f}, global acceptance "
            f"{health.global_accept_prob:.2f}, walker R̂ {health.walker_rhat:.3f}, warm-up "
            f"warnings {ours}, check_run problems "
            f"{len(health.problems)}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        for problem in health.problems:
            print(f"    check_run: {problem.split(':')[0]}")


if __name__ == "__main__":
    main()
