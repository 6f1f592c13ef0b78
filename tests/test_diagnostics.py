import arviz
import arviz_base
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from numpyro_ebm.diagnostics import from_numpyro
from numpyro_ebm.energies import ebm_model, energy_factor

NUM_DATA = 20


def _prior_energy(x):
    return 0.5 * jnp.sum(x**2)


def _model(y):
    # An EBM prior on x (a factor) and a genuine Gaussian likelihood on the data y.
    x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real_vector, (), (2,)))
    energy_factor("prior_energy", _prior_energy, x)
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=y)


@pytest.fixture(scope="module")
def mcmc():
    y = 1.0 + jax.random.normal(jax.random.key(0), (NUM_DATA, 2))
    sampler = MCMC(
        NUTS(_model),
        num_warmup=200,
        num_samples=200,
        num_chains=2,
        chain_method="sequential",
        progress_bar=False,
    )
    sampler.run(jax.random.key(1), y)
    return sampler


def test_plain_arviz_counts_the_energy_factor_as_likelihood(mcmc):
    # Negative control: the problem METHOD §6 describes exists with plain ArviZ.
    tree = arviz.from_numpyro(mcmc, log_likelihood=True)
    assert "prior_energy" in tree["log_likelihood"].data_vars
    assert "prior_energy" in tree["observed_data"].data_vars


def test_from_numpyro_drops_energy_factor_keeps_likelihood(mcmc):
    tree = from_numpyro(mcmc, log_likelihood=True)
    assert set(tree["log_likelihood"].data_vars) == {"y"}
    assert set(tree["observed_data"].data_vars) == {"y"}
    assert tree["log_likelihood"]["y"].shape == (2, 200, NUM_DATA)
    # The posterior itself is untouched.
    np.testing.assert_array_equal(
        tree["posterior"]["x"].values, np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    )
    # The likelihood values are those of the Gaussian alone.
    x = tree["posterior"]["x"].values[0, 0]
    y = tree["observed_data"]["y"].values
    expected = dist.Normal(x, 1.0).log_prob(y).sum(-1)
    np.testing.assert_allclose(tree["log_likelihood"]["y"].values[0, 0], expected, rtol=1e-5)


def test_loo_runs_on_converted_tree(mcmc):
    result = arviz.loo(from_numpyro(mcmc, log_likelihood=True), pointwise=True)
    assert np.isfinite(result.elpd)
    assert result.n_data_points == NUM_DATA


def test_ebm_only_model_has_no_likelihood_groups():
    sampler = MCMC(
        NUTS(ebm_model(_prior_energy, 2)), num_warmup=20, num_samples=20, progress_bar=False
    )
    sampler.run(jax.random.key(0))
    tree = from_numpyro(sampler, log_likelihood=True)
    assert "log_likelihood" not in tree.children
    assert "observed_data" not in tree.children
    assert tree["posterior"]["x"].shape == (1, 20, 2)


def test_from_numpyro_accepts_an_adapter_without_mutating_it(mcmc):
    adapter = arviz_base.MCMCAdapter(mcmc)
    model = adapter.model
    tree = from_numpyro(adapter, log_likelihood=True)
    assert adapter.model is model
    assert set(tree["log_likelihood"].data_vars) == {"y"}


def test_from_numpyro_rejects_other_objects():
    with pytest.raises(TypeError, match=r"numpyro\.infer\.MCMC .* got dict"):
        from_numpyro({"x": np.zeros((1, 10))})
