"""Where the walkers start: too few, or all at one point, is said before any iteration.

The regression (a user's ``y ~ N(θ², 1)``, whose mode θ > 0 holds 0.77 of the mass): with
NumPyro-sized ``num_chains`` of 7, 8 or 16 the walkers emptied one mode during warm-up in 4, 2
and 1 runs of 6, and ``init_to_value(θ = 2)`` with 128 walkers gave P(θ > 0) = 1.000, each
without a warning, where NUTS's R̂ across its chains was 24. The controls are 32 walkers and the
default ``init_to_sample``, which must stay quiet.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import init_to_sample, init_to_uniform, init_to_value

from numpyro_ebm import FlowMCKernel
from numpyro_ebm._start_checks import MIN_WALKERS

_Y = np.full(10, 4.0)


def squared_mean():
    theta = numpyro.sample("theta", dist.Normal(0.3, 1.0))
    numpyro.sample("y", dist.Normal(theta**2, 1.0), obs=_Y)


def _start_messages(num_walkers, init_strategy=init_to_sample):
    kernel = FlowMCKernel(squared_mean, init_strategy=init_strategy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel.init(jax.random.split(jax.random.PRNGKey(0), num_walkers), 10)
    return [str(w.message) for w in caught if "FlowMCKernel" in str(w.message)]


@pytest.mark.parametrize(("num_walkers", "warned"), [(7, True), (MIN_WALKERS, False)])
def test_fewer_than_32_walkers_are_warned_of_before_any_iteration(num_walkers, warned):
    messages = _start_messages(num_walkers)
    assert any(f"with {num_walkers} walkers (num_chains)" in m for m in messages) == warned
    assert MIN_WALKERS == 32


@pytest.mark.parametrize(
    ("init_strategy", "warned"), [(init_to_value(values={"theta": 2.0}), True), (None, False)]
)
def test_walkers_that_all_start_at_one_point_are_warned_of(init_strategy, warned):
    messages = _start_messages(64, init_strategy or init_to_sample)
    together = [m for m in messages if "every walker starts at the same value" in m]
    assert bool(together) == warned
    if warned:
        assert together[0].startswith("FlowMCKernel: in 1 of 1 coordinates")


_UNIFORM_DATA = jnp.array([0.5, 1.2, 2.7, 3.9, 4.9, 0.1, 2.2, 3.3])  # NumPy data fail in NumPyro


def uniform_up_to_theta():
    """A user's model where 0.74 % of prior draws are valid starts: θ must exceed max y = 4.9."""
    theta = numpyro.sample("theta", dist.Exponential(1.0))
    with numpyro.plate("n", len(_UNIFORM_DATA)):
        numpyro.sample("y", dist.Uniform(0.0, theta), obs=_UNIFORM_DATA)


def test_no_valid_start_for_every_walker_names_walkers_and_a_remedy():
    keys = jax.random.split(jax.random.PRNGKey(0), 128)
    with pytest.raises(RuntimeError, match=r"all 128 walkers with init_strategy=init_to_sample"):
        FlowMCKernel(uniform_up_to_theta).init(keys, 10)
    # The remedy it names starts every walker (the control: the same model, the same keys).
    state = FlowMCKernel(uniform_up_to_theta, init_strategy=init_to_uniform).init(keys, 10)
    assert np.all(np.isfinite(np.asarray(state.potential_energy)))
