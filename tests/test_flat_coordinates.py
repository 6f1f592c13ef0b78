"""Coordinates the potential does not depend on: NumPyro's ``obs_mask`` imputation.

``numpyro.sample("y", d, obs=y, obs_mask=mask)`` makes a latent ``y_unobserved`` of the full
shape whose observed entries have no density: the posterior is flat (improper) in them. The
walkers spread there without bound, as NUTS's chains do; what matters is that the identified
parameters come out right and the local moves keep working.
"""

import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from _targets import vectorized_mcmc
from numpyro.diagnostics import effective_sample_size

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
