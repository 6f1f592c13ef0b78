"""A ``potential_fn`` as flowMC users write it: its shape and dtype, and runs without warm-up."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _targets import vectorized_mcmc

from numpyro_ebm import FlowMCKernel


def _mcmc(kernel, num_warmup=5, num_samples=5):
    return vectorized_mcmc(kernel, num_warmup, num_samples, 8)


def _start(dim=3):
    return jax.random.normal(jax.random.key(0), (8, dim))


def test_a_potential_that_is_not_a_scalar_is_named_before_any_work():
    # Regression: "cannot reshape array of shape (1984, 1984) ... into shape (64, 31)".
    kernel = FlowMCKernel(potential_fn=lambda x: 0.5 * jnp.sum(x**2, keepdims=True))
    with pytest.raises(ValueError, match=r"scalar potential per walker, got shape \(1,\)"):
        _mcmc(kernel).run(jax.random.PRNGKey(0), init_params=_start())


@pytest.mark.filterwarnings("ignore:FlowMCKernel after warm-up")  # 8 walkers, 50 draws: R̂
def test_a_potential_in_another_dtype_runs_in_the_walkers_dtype():
    # Regression: float16 energies of float32 walkers broke the loop's carry types.
    kernel = FlowMCKernel(
        potential_fn=lambda x: (0.5 * jnp.sum(x**2)).astype(jnp.float16), num_particles=4
    )
    mcmc = _mcmc(kernel, num_warmup=50, num_samples=50)
    mcmc.run(jax.random.PRNGKey(0), init_params=_start())
    draws = np.asarray(mcmc.get_samples())
    assert draws.dtype == np.float32
    assert np.isfinite(draws).all() and np.abs(draws.mean(axis=0)).max() < 0.5


def test_sampling_without_warm_up_warns_that_mala_is_untuned():
    start = _start()
    with pytest.warns(UserWarning, match="without warm-up: MALA keeps its initial step size"):
        _mcmc(FlowMCKernel(potential_fn=lambda x: jnp.sum(x**2)), num_warmup=0).run(
            jax.random.PRNGKey(0), init_params=start
        )
    # Control: one warm-up round, or no local moves to tune, and there is nothing to say.
    for options, num_warmup in (({}, 1), ({"num_local_steps": 0}, 0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kernel = FlowMCKernel(potential_fn=lambda x: jnp.sum(x**2), **options)
            _mcmc(kernel, num_warmup=num_warmup).run(jax.random.PRNGKey(0), init_params=start)
        assert not any("without warm-up" in str(w.message) for w in caught)
