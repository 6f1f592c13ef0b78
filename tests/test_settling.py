"""Walkers settle into their starting basins before the first global move.

The regression (a user's model: a broad N(0, 4²) prior on 6 coordinates times a four-component
Gaussian mixture of sd 0.3, exact weights 0.112, 0.233, 0.259, 0.397): with the defaults and 128
walkers started from prior draws, the 0.112 mode got no draw in 3 of 5 seeds and nothing warned.
Fifteen walkers reached its basin in the first round; global moves from a flow fitted on walkers
still on their way in sent them elsewhere within two rounds, and the flow, fitted on the
walkers, never proposed the mode again. The kernel now makes local moves only in the first
``SETTLE_ROUNDS`` rounds of warm-up when it fits its own flow.

The test runs seeds 0-3 and needs each weight within 0.03 of the exact one (the settled runs of
six seeds were within 0.004 of it). The control, the same runs without settling, lost the mode
in seeds 0, 2 and 3 of 0-5 on the project's machine: it must lose it in at least one of six
seeds, which a kernel losing it in half the seeds misses with probability 1/64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _targets import without_settling
from numpyro.infer import MCMC

from numpyro_ebm import FlowMCKernel

_DIM, _MODE_SD, _PRIOR_SD = 6, 0.3, 4.0
_CENTRES = np.random.default_rng(42).normal(0.0, 3.0, size=(4, _DIM))
_WEIGHTS = np.array([0.5, 0.2, 0.3, 0.4]) / 1.4


def mixture_likelihood():
    x = numpyro.sample("x", dist.Normal(0.0, _PRIOR_SD).expand([_DIM]).to_event(1))
    components = dist.Normal(jnp.asarray(_CENTRES), _MODE_SD).to_event(1).log_prob(x)
    numpyro.factor("likelihood", jax.nn.logsumexp(jnp.log(_WEIGHTS) + components))


def exact_weight_of_mode_0() -> float:
    """Each component times the prior integrates to its weight times N(centre; 0, s0² + s²)."""
    log_mass = np.log(_WEIGHTS) - 0.5 * np.sum(_CENTRES**2, 1) / (_PRIOR_SD**2 + _MODE_SD**2)
    mass = np.exp(log_mass - log_mass.max())
    return float(mass[0] / mass.sum())


def weight_of_mode_0(seed: int, settle: bool = True) -> float:
    kernel = FlowMCKernel(mixture_likelihood)
    if not settle:
        without_settling(kernel)
    mcmc = MCMC(
        kernel,
        num_warmup=200,
        num_samples=200,
        num_chains=128,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed))
    x = np.asarray(mcmc.get_samples()["x"])
    nearest = np.argmin(np.sum((x[:, None] - _CENTRES) ** 2, -1), 1)
    return float(np.mean(nearest == 0))


def test_a_mode_reached_in_the_first_round_keeps_its_weight():
    exact = exact_weight_of_mode_0()
    weights = [weight_of_mode_0(seed) for seed in range(4)]
    assert np.max(np.abs(np.array(weights) - exact)) < 0.03, (weights, exact)


def test_control_without_settling_loses_the_mode_in_some_seed():
    lost = (weight_of_mode_0(seed, settle=False) < 0.05 for seed in range(6))
    assert any(lost)  # stops at the first seed that loses it
