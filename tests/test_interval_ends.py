"""Sites of interval support whose posterior piles at both ends of the interval.

NumPyro samples such a site through a logit, where the two ends are two far-apart tails. The
regression is the aliased sinusoid of ``benchmarks/aliased_sinusoid.py``: its phase
``φ ~ Uniform(0, 2π)`` straddles 0 = 2π in the 1.3-per-day alias, and with global moves only
the alias weights came out 0.15 off at a global acceptance of 0.49 with no warning. Here a
phase alone, von Mises about 0 on ``Uniform(0, 2π)``, must be reported by ``check_run``; its
negative control, the same posterior about π, must not.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _targets import vectorized_mcmc

from numpyro_ebm import FlowMCKernel
from numpyro_ebm._health_rules import MAX_EDGE_SHARE, end_shares
from numpyro_ebm.health import _fixed_intervals, check_run, interval_ends_problems

TWO_PI = 2 * np.pi


def _phase_model(centre):
    def model():
        phi = numpyro.sample("phi", dist.Uniform(0.0, TWO_PI))
        numpyro.factor("von_mises", 4.0 * jnp.cos(phi - centre))

    return model


@pytest.mark.parametrize(("centre", "reported"), [(0.0, True), (np.pi, False)])
def test_a_phase_that_wraps_around_its_interval_is_reported(centre, reported):
    mcmc = vectorized_mcmc(FlowMCKernel(_phase_model(centre)), 200, 200, 32)
    mcmc.run(jax.random.PRNGKey(0))
    problems = [p for p in check_run(mcmc).problems if p.startswith("site 'phi'")]
    assert bool(problems) == reported, problems


def _von_mises_draws(centre, shape, seed=0):
    rng = np.random.default_rng(seed)
    return np.mod(rng.vonmises(centre, 4.0, size=shape), TWO_PI)


def test_end_shares_count_the_outer_tenths():
    # Von Mises(0, 4): P(0 < φ < 0.2π) = 0.3826 on each side (scipy.stats.vonmises(4).cdf),
    # to within 0.012 at 20 000 draws: 3.5 binomial sds, a false alarm below 1e-3.
    low, high = end_shares(_von_mises_draws(0.0, (4, 5000)), 0.0, TWO_PI)
    assert abs(low - 0.3826) < 0.012 and abs(high - 0.3826) < 0.012


def test_only_piles_at_both_ends_are_problems():
    flat = np.random.default_rng(1).uniform(0.0, TWO_PI, (4, 5000))
    one_end = np.random.default_rng(2).beta(0.5, 3.0, (4, 5000)) * TWO_PI
    centre = _von_mises_draws(np.pi, (4, 5000))
    # A flat posterior puts 0.1 in each tenth: the threshold is 1.5 times that.
    assert MAX_EDGE_SHARE == pytest.approx(0.15)
    for draws in (flat, one_end, centre):
        assert interval_ends_problems({"phi": (draws, 0.0, TWO_PI)}) == ()
    assert len(interval_ends_problems({"phi": (_von_mises_draws(0.0, (4, 5000)), 0.0, TWO_PI)}))


def test_a_vector_site_names_the_coordinate_that_wraps():
    draws = np.stack(
        [_von_mises_draws(np.pi, (2, 1000)), _von_mises_draws(0.0, (2, 1000), seed=3)], -1
    )
    (message,) = interval_ends_problems({"phases": (draws, np.zeros(2), np.full(2, TWO_PI))})
    assert message.startswith("site 'phases[1]':")


def test_supports_that_depend_on_other_sites_are_left_out_and_improper_ones_do_not_crash():
    # Regression: the model was traced with draws from every site, which an ImproperUniform
    # site (a lattice field written as ImproperUniform + numpyro.factor, as sample_energy's
    # model is) cannot give: check_run raised NotImplementedError.
    def model():
        upper = numpyro.sample("upper", dist.HalfNormal(1.0))
        numpyro.sample("x", dist.Uniform(0.0, upper))
        numpyro.sample("p", dist.Beta(2.0, 2.0))
        numpyro.sample("angle", dist.VonMises(0.0, 1.0))  # circular: sampled unconstrained
        field = numpyro.sample("field", dist.ImproperUniform(dist.constraints.real, (), (2,)))
        numpyro.factor("energy", -0.5 * jnp.sum(field**2))

    mcmc = vectorized_mcmc(FlowMCKernel(model), 20, 20, 32)
    mcmc.run(jax.random.PRNGKey(0))
    samples = mcmc.get_samples(group_by_chain=True)
    assert list(_fixed_intervals(mcmc, samples)) == ["p"]
    check_run(mcmc)
