"""Known targets with exact samplers, the thresholds of the statistical tests, a round config.

Shared by the tests of the samplers, the kernel and its adaptation.
Every statistical check states a false-alarm rate; a family of ``k`` checks in one test splits
it by Bonferroni (``alpha / k`` each), so the test fails by chance with probability <= ``alpha``.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from numpyro_ebm.flows import flow_optimizer
from numpyro_ebm.samplers.flowmc import FlowMCConfig

# -- 2-D correlated Gaussian ---------------------------------------------------------------

GAUSS_MEAN = np.array([1.0, -0.5])
# Correlation 0.6 / sqrt(0.5) ≈ 0.85: strongly correlated, unequal scales.
GAUSS_COV = np.array([[1.0, 0.6], [0.6, 0.5]])
GAUSS_PRECISION = np.linalg.inv(GAUSS_COV)


def gaussian_potential(x: jax.Array) -> jax.Array:
    """``U(x) = ½ (x − m)ᵀ Σ⁻¹ (x − m)`` of the 2-D correlated Gaussian."""
    residual = x - jnp.asarray(GAUSS_MEAN, x.dtype)
    return 0.5 * residual @ jnp.asarray(GAUSS_PRECISION, x.dtype) @ residual


def gaussian_draws(key: jax.Array, num: int) -> jax.Array:
    """Exact draws of the 2-D correlated Gaussian, shape ``(num, 2)``."""
    return jax.random.multivariate_normal(
        key, jnp.asarray(GAUSS_MEAN), jnp.asarray(GAUSS_COV), (num,)
    )


def gaussian_marginal_cdfs():
    """Exact CDF of each coordinate of the Gaussian."""
    return [stats.norm(GAUSS_MEAN[i], np.sqrt(GAUSS_COV[i, i])).cdf for i in range(len(GAUSS_MEAN))]


# -- 2-mode mixture (2/3) N(+3e, I) + (1/3) N(-3e, I) in d = 2, e = (1, 1) -----------------

MIX_WEIGHT = 2.0 / 3.0
MIX_SHIFT = np.array([3.0, 3.0])  # 3e with e = (1, 1): modes 8.5 apart, a ~8-nat barrier
MIX_MEAN = (2 * MIX_WEIGHT - 1) * MIX_SHIFT  # = e
MIX_VAR = 1.0 + MIX_SHIFT**2 - MIX_MEAN**2  # per coordinate: 1 + Var(±3)


def mixture_potential(x: jax.Array) -> jax.Array:
    """``U = −log[(2/3) N(x; 3e, I) + (1/3) N(x; −3e, I)]`` up to a constant."""
    shift = jnp.asarray(MIX_SHIFT, x.dtype)
    log_weights = jnp.log(jnp.asarray([MIX_WEIGHT, 1.0 - MIX_WEIGHT], x.dtype))
    sq = jnp.stack([jnp.sum((x - shift) ** 2), jnp.sum((x + shift) ** 2)])
    return -jax.nn.logsumexp(log_weights - 0.5 * sq)


def mixture_draws(key: jax.Array, num: int) -> jax.Array:
    """Exact draws of the mixture, shape ``(num, 2)``."""
    key_mode, key_noise = jax.random.split(key)
    sign = jnp.where(jax.random.uniform(key_mode, (num, 1)) < MIX_WEIGHT, 1.0, -1.0)
    return sign * jnp.asarray(MIX_SHIFT) + jax.random.normal(key_noise, (num, 2))


def mixture_marginal_cdfs():
    """Exact CDF of each coordinate of the mixture."""

    def cdf_of(i):
        return lambda t: (
            MIX_WEIGHT * stats.norm.cdf(t - MIX_SHIFT[i])
            + (1 - MIX_WEIGHT) * stats.norm.cdf(t + MIX_SHIFT[i])
        )

    return [cdf_of(i) for i in range(len(MIX_SHIFT))]


def in_plus_mode(x) -> np.ndarray:
    """Indicator of the + mode's half-space ``x · e > 0`` (the zone of the + component)."""
    return (np.asarray(x) @ np.sign(MIX_SHIFT) > 0).astype(float)


# -- Thresholds ----------------------------------------------------------------------------


def two_sided_z(alpha: float, num_checks: int = 1) -> float:
    """Normal quantile for a two-sided test at family-wise rate ``alpha`` over ``num_checks``."""
    return float(stats.norm.ppf(1.0 - alpha / (2 * num_checks)))


# -- Shared runs (compiling a default kernel costs seconds on 2 cores: run it once) ----------

MIX_NUM_WALKERS = 64
MIX_NUM_WARMUP = 100
MIX_NUM_SAMPLES = 100


def mixture_model():
    """The mixture as a NumPyro model: an improper flat prior and a factor ``−U(x)``."""
    import numpyro
    import numpyro.distributions as dist

    x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real_vector, (), (2,)))
    numpyro.factor("mixture", -mixture_potential(x))


def without_settling(kernel):
    """``kernel`` making global moves from its first warm-up round, as before settling existed.

    Controls that reproduce a failure seen without settling (see ``tests/test_settling.py``)
    use it: the random stream is the same, so the run is the one that failed.
    """
    kernel._round_options["settle_rounds"] = 0
    return kernel


def vectorized_mcmc(kernel, num_warmup: int, num_samples: int, num_walkers: int, **options):
    """NumPyro's ``MCMC`` of ``kernel`` with ``num_walkers`` walkers (no progress bar unless
    ``options`` ask for one)."""
    from numpyro.infer import MCMC

    return MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_walkers,
        chain_method="vectorized",
        **{"progress_bar": False, **options},
    )


@functools.cache
def mixture_flowmc_run():
    """FlowMCKernel with its defaults (affine coupling flow, i-SIR, N = 32) on the mixture model.

    Walkers start half in each mode (exact draws of each component), so the flow can propose
    both; the + mode's weight must move from 1/2 to 2/3. Used by ``test_mcse.py`` (weights)
    and ``test_kernel.py`` (pickling a run with the default flow).
    """
    from numpyro_ebm import FlowMCKernel

    key_init, key_run = jax.random.split(jax.random.key(2023))
    sign = jnp.where(jnp.arange(MIX_NUM_WALKERS) < MIX_NUM_WALKERS // 2, 1.0, -1.0)[:, None]
    init = sign * jnp.asarray(MIX_SHIFT) + jax.random.normal(key_init, (MIX_NUM_WALKERS, 2))
    mcmc = vectorized_mcmc(
        FlowMCKernel(mixture_model), MIX_NUM_WARMUP, MIX_NUM_SAMPLES, MIX_NUM_WALKERS
    )
    mcmc.run(key_run, init_params={"x": init})
    return SimpleNamespace(
        mcmc=mcmc,
        init=np.asarray(init),
        draws=np.asarray(mcmc.get_samples(group_by_chain=True)["x"], np.float64),
        extra=mcmc.get_extra_fields(group_by_chain=True),
    )


def round_config(**overrides):
    """A :class:`~numpyro_ebm.samplers.FlowMCConfig` for tests that drive rounds directly.

    i-SIR with 8 particles in chunks of 3, 5 MALA steps, the default acceptance target, one
    tiny fit per round with a fresh optimizer; ``overrides`` replace any field.
    """
    options = dict(
        num_local_steps=5,
        global_move="isir",
        num_particles=8,
        chunk_size=3,
        target_accept_prob=0.574,
        fit_flow=True,
        fit_every=1,
        num_fit_steps=1,
        fit_batch_size=1,
        optimizer=flow_optimizer(),
    )
    return FlowMCConfig(**{**options, **overrides})
