"""Stalled local moves: where the posterior is much narrower than MALA's step size (a funnel's
neck), only the flow moves walkers, and a run that samples such a region must say so, as NUTS
reports divergences there.

The regression is a centred hierarchy of 30 groups. FlowMCKernel put 0.13 of its mass at
τ < 0.1 instead of 0.19 (128 walkers, 1000 + 1000 rounds) with a global acceptance of 0.89,
R̂ 1.00 and no warning; NUTS on the same model reports over a thousand divergences. Its
negative control is the same model with NumPyro's ``LocScaleReparam`` (non-centred), which
FlowMCKernel samples correctly (0.19) and which must stay quiet.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _targets import vectorized_mcmc
from numpyro.infer.reparam import LocScaleReparam

from numpyro_ebm import FlowMCKernel
from numpyro_ebm.health import MAX_STALLED_FRACTION, check_run, find_problems

_NUM_GROUPS = 30
_rng = np.random.default_rng(5)
_Y = jnp.asarray(1.0 + 0.3 * _rng.normal(size=_NUM_GROUPS) + 0.7 * _rng.normal(size=_NUM_GROUPS))


def centred_hierarchy():
    """Group means θ_j ~ N(μ, τ) observed once each with noise 0.7: a funnel in (log τ, θ)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfNormal(2.0))
    with numpyro.plate("groups", _NUM_GROUPS):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, 0.7), obs=_Y)


non_centred_hierarchy = numpyro.handlers.reparam(
    centred_hierarchy, config={"theta": LocScaleReparam(0)}
)


def _run(model, seed, **options):
    mcmc = vectorized_mcmc(FlowMCKernel(model, **options), 300, 200, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc.run(jax.random.PRNGKey(seed))
    return mcmc, [str(w.message) for w in caught if "FlowMCKernel" in str(w.message)]


def test_a_funnels_neck_that_stalls_the_local_moves_is_reported():
    # Measured with seeds 0-3: 8.8-10.4 % of the kept walker-draws stalled (threshold 5 %);
    # P(τ < 0.1) 0.09-0.12 against 0.19. The warning at the end of warm-up judges one round
    # of 64 walkers, near its threshold: it fired with seeds 1 and 2, not with 0 and 3.
    warned = []
    for seed in (0, 1):
        mcmc, messages = _run(centred_hierarchy, seed)
        health = check_run(mcmc)
        assert health.stalled_fraction > MAX_STALLED_FRACTION
        assert any("local moves stalled" in problem for problem in health.problems)
        assert len(messages) <= 1
        warned += [message for message in messages if "LocScaleReparam" in message]
    assert warned


@pytest.mark.parametrize("seed", [0, 1])
def test_control_the_non_centred_hierarchy_is_quiet(seed):
    # The same posterior without the funnel: 1.8-2.0 % stalled with seeds 0-2.
    mcmc, messages = _run(non_centred_hierarchy, seed)
    assert messages == []
    assert check_run(mcmc).problems == ()


def test_global_moves_alone_never_count_as_stalled():
    # Without MALA steps the round's local acceptance is 0 by convention: not a stall.
    mcmc, messages = _run(non_centred_hierarchy, 0, num_local_steps=0)
    assert messages == []
    assert check_run(mcmc).stalled_fraction == 0.0


@pytest.mark.parametrize(("fraction", "reported"), [(0.04, False), (0.06, True)])
def test_the_stalled_threshold(fraction, reported):
    problems = find_problems(0.5, 0.3, 1.0, stalled_fraction=fraction)
    assert any("stalled" in problem for problem in problems) == reported
