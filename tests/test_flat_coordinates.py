"""Coordinates the potential does not depend on: NumPyro's ``obs_mask`` imputation.

And coordinates with a zero gradient that are not improper: inside a hard box.

``numpyro.sample("y", d, obs=y, obs_mask=mask)`` makes a latent ``y_unobserved`` of the full
shape whose observed entries have no density: the posterior is flat (improper) in them. The
walkers spread there without bound, as NUTS's chains do; what matters is that the identified
parameters come out right and the local moves keep working.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _targets import vectorized_mcmc
from numpyro.diagnostics import effective_sample_size

import numpyro_ebm.samplers.flowmc as flowmc
import numpyro_ebm.samplers.warmup as warmup
from numpyro_ebm import FlowMCKernel

Y = np.random.default_rng(0).normal(2.0, 1.0, size=8)
OBSERVED = np.ones(8, bool)
OBSERVED[[1, 5]] = False


def _imputation(y, mask):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    numpyro.sample("y", dist.Normal(mu, sigma).expand([8]), obs=y, obs_mask=mask)


def _reference_mu() -> tuple[float, float]:
    """Posterior mean and sd of ``mu`` given the observed entries, by quadrature."""
    mu, sigma = np.meshgrid(np.linspace(-3, 8, 1101), np.linspace(1e-3, 6, 1200), indexing="ij")
    residuals = (Y[OBSERVED] - mu[..., None]) / sigma[..., None]
    log_p = -0.5 * (mu / 5) ** 2 - 0.5 * (sigma / 2) ** 2
    log_p = log_p - OBSERVED.sum() * np.log(sigma) - 0.5 * np.sum(residuals**2, axis=-1)
    weights = np.exp(log_p - log_p.max())
    weights /= weights.sum()
    mean = np.sum(weights * mu)
    return float(mean), float(np.sqrt(np.sum(weights * (mu - mean) ** 2)))


def _run():
    mcmc = vectorized_mcmc(FlowMCKernel(_imputation), 300, 300, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # R̂ of the flat entries, which never mix
        mcmc.run(jax.random.PRNGKey(0), np.where(OBSERVED, Y, 0.0), OBSERVED)
    mu = np.asarray(mcmc.get_samples(group_by_chain=True)["mu"])
    return mu, float(np.asarray(mcmc.last_state.step_size).ravel()[0])


def test_flat_coordinates_leave_the_identified_parameters_right(monkeypatch):
    mean, sd = _reference_mu()
    mu, step_size = _run()
    # Walkers as chains. The 0.1-sd bound is at least 5 MCSE wide (checked, not assumed): a
    # false alarm below 1e-6.
    mcse = np.std(mu) / np.sqrt(effective_sample_size(mu))
    assert 5 * mcse < 0.1 * sd
    assert abs(mu.mean() - mean) < 0.1 * sd
    assert step_size > 1e-3
    # Control: with the preconditioner re-estimated in the flat coordinates too, it widens
    # with their spread until the potential overflows: the step size collapses to 0 and the
    # local moves stop (the walkers' mu then depends on where they stopped).
    monkeypatch.setattr(warmup, "hold_flat_coordinates", lambda estimate, *_: estimate)
    _, collapsed = _run()
    assert collapsed < 1e-7


def _box(x):
    """U = ∞ outside [0, 10]⁴; inside, only x₀ enters: x₁..x₃ are uniform (sd 10/√12)."""
    inside = jnp.all((x > 0.0) & (x < 10.0))
    return jnp.where(inside, 0.5 * (x[0] - 5.0) ** 2, jnp.inf)


def _box_scales():
    """The preconditioner's scales of x₁..x₃ after warm-up, walkers started 0.1 from the centre."""
    start = 5.0 + jax.random.uniform(jax.random.PRNGKey(1), (64, 4), minval=-0.1, maxval=0.1)
    mcmc = vectorized_mcmc(FlowMCKernel(potential_fn=_box), 300, 10, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the control's walkers do not mix
        mcmc.run(jax.random.PRNGKey(0), init_params=start)
    return np.asarray(mcmc.last_state.adaptation.preconditioner.scale)[1:]


def test_a_hard_box_is_not_improper(monkeypatch):
    # flowMC users write bounded priors as an infinite potential outside a box. The zero
    # gradient inside held the preconditioner of x₁..x₃ at the start's spread (0.058) for the
    # whole warm-up: 33-58 % of walkers stranded, Var(x₁) 7.7 against 8.33. The box's edge
    # makes the potential infinite 1000 scales away: not improper. The scales now come out
    # near 2.89 (an ensemble estimate from the buffer's thousands of positions).
    scales = _box_scales()
    assert np.all((scales > 2.3) & (scales < 3.5)), scales
    # Control: every flat coordinate held, as before.
    monkeypatch.setattr(
        flowmc, "unbounded_coordinates", lambda potential_fn, x, p: jnp.ones(x.shape, bool)
    )
    held = _box_scales()
    assert np.all(held < 0.5), held


def test_the_warning_names_the_flat_coordinates_first():
    # Regression: a user's obs_mask regression (coefficients right, as NUTS's) warned of a
    # global acceptance of 0, walkers not mixed and 88 % stranded, with remedies that do not
    # apply, and never of the flat observed entries that cause all three. Control: the same
    # model with every entry missing has no flat coordinate and must not name one.
    for mask, num_flat in ((OBSERVED, int(OBSERVED.sum())), (np.zeros(8, bool), 0)):
        mcmc = vectorized_mcmc(FlowMCKernel(_imputation), 300, 300, 32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mcmc.run(jax.random.PRNGKey(0), np.where(mask, Y, 0.0), mask)
        after_warmup = [str(w.message) for w in caught if "after warm-up" in str(w.message)]
        named = [m for m in after_warmup if "coordinate(s) are flat" in m]
        assert len(named) == (num_flat > 0), after_warmup
        if num_flat:
            assert named[0].startswith(f"FlowMCKernel after warm-up: {num_flat} coordinate(s)")
        assert np.sum(np.asarray(mcmc.last_state.adaptation.flat)) == num_flat
