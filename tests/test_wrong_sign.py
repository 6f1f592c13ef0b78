"""A potential of the wrong sign is refused before any iteration.

flowMC and emcee take the log density; ``FlowMCKernel(potential_fn=...)`` takes its negative.
The regression: a flowMC user's two-mode ``log_prob`` given as ``potential_fn`` ran all 600
iterations (45 s on 2 cores), sent every walker to ±1.8e19 and ended with four warnings, the
sign named in the second. The negative control is the same density with the right sign, and
the potentials that are proper or flat but not convex near the walkers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _targets import vectorized_mcmc

from numpyro_ebm import FlowMCKernel
from numpyro_ebm._far_probes import falls_everywhere, probe_points


def log_prob(x):
    """flowMC's convention: the log density of two unit Gaussians at ±3."""
    return jnp.logaddexp(-0.5 * jnp.sum((x - 3) ** 2), -0.5 * jnp.sum((x + 3) ** 2))


def _run(kernel, num_walkers=8, **run_options):
    mcmc = vectorized_mcmc(kernel, 2, 2, num_walkers)
    mcmc.run(jax.random.PRNGKey(0), **run_options)
    return mcmc


def test_a_log_density_given_as_potential_is_refused_before_any_iteration():
    kernel = FlowMCKernel(potential_fn=log_prob)
    with pytest.raises(ValueError, match=r"potential_fn=lambda x: -log_prob\(x\)"):
        kernel.init(jax.random.split(jax.random.PRNGKey(0), 8), 2, jnp.zeros((8, 2)))
    # The control: the potential U = -log p samples.
    mcmc = _run(FlowMCKernel(potential_fn=lambda x: -log_prob(x)), init_params=jnp.zeros((8, 2)))
    assert np.isfinite(np.asarray(mcmc.get_samples())).all()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_model_whose_factor_has_the_wrong_sign_is_refused(sign):
    def model():
        x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real_vector, (), (2,)))
        numpyro.factor("energy", -sign * 0.5 * jnp.sum(x**2))  # sign -1: +|x|²/2, improper

    if sign > 0:
        assert np.isfinite(np.asarray(_run(FlowMCKernel(model)).get_samples()["x"])).all()
    else:
        with pytest.raises(ValueError, match=r"check the signs of its numpyro\.factor terms"):
            _run(FlowMCKernel(model))


@pytest.mark.parametrize(
    ("potential", "negative_falls"),
    [
        (lambda x: jnp.sum(jnp.log1p(x**2)), True),  # Cauchy tails: rises only as a log
        (lambda x: 0.0 * jnp.sum(x), False),  # flat: neither rises nor falls, either sign
        (lambda x: 0.5 * (x[0] - 2e3) ** 2, True),  # flat in x[1], the mode 2000 sds away
        (lambda x: -log_prob(x), True),  # not convex between the modes
    ],
)
def test_proper_or_flat_potentials_pass_the_probe_and_their_negatives_do_not(
    potential, negative_falls
):
    probes = probe_points(jax.random.normal(jax.random.key(1), (16, 2)))
    assert not falls_everywhere(jax.vmap(potential)(probes))
    assert falls_everywhere(jax.vmap(lambda x: -potential(x))(probes)) == negative_falls


def test_a_potential_undefined_at_the_walkers_mean_is_not_judged():
    assert not falls_everywhere(np.array([np.inf, -1.0, -1.0]))
    assert not falls_everywhere(np.array([np.nan, -1.0, -1.0]))
    assert not falls_everywhere(np.array([0.0, np.inf, -np.inf]))  # a pair that is NaN
