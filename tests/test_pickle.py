"""Every ``FlowMCKernel`` configuration pickles, and an unpickled ``MCMC`` continues exactly.

NumPyro users pickle ``MCMC`` objects. After loading, ``mcmc.post_warmup_state =
mcmc.last_state; mcmc.run(key)`` must give the very draws the original object gives with the
same key, for kernels built from a ``model`` or a ``potential_fn`` (without passing
``init_params`` again), with the default flow or a user's flow (the "warm up once, sample
more" pattern, and what ``numpyro-ebm sample`` builds). Cheap settings: compilation dominates.
"""

import pickle
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _trees import leaves_equal
from flowjax.distributions import AbstractDistribution, Normal, StandardNormal
from flowjax.flows import coupling_flow
from numpyro.infer import MCMC

from numpyro_ebm import FlowMCKernel, MLPEnergy, energy_factor
from numpyro_ebm._pickling import dumps_flow, loads_flow
from numpyro_ebm.flows import default_flow, merge_flow, split_flow
from numpyro_ebm.preprocessing import Preprocessing
from numpyro_ebm.training import load_energy, sample_energy, save_model
from numpyro_ebm.training.mesh import data_mesh, put_on_mesh, split_leading_axis

NUM_WALKERS = 8
CHEAP = dict(num_particles=4, num_local_steps=1, num_fit_steps=2, fit_batch_size=16)
CHEAP_FLOW = dict(flow_layers=1, nn_width=8)


def model():
    numpyro.sample("x", dist.Normal(1.0, 2.0).expand([2]))


def potential_fn(z):
    return 0.5 * jnp.sum(((z["x"] - 1.0) / 2.0) ** 2)


def quartic_energy(x):
    return 0.1 * jnp.sum(x**4)


# NumPyro turns its bar off under CI; with it on, continuations reuse one compilation.
pytestmark = pytest.mark.usefixtures("progress_bar_allowed")


def _mcmc(kernel):
    return MCMC(
        kernel,
        num_warmup=5,
        num_samples=5,
        num_chains=NUM_WALKERS,
        chain_method="vectorized",
        progress_bar=True,
    )


def _init_params():
    return {"x": jax.random.normal(jax.random.key(1), (NUM_WALKERS, 2))}


def _continue(mcmc, key):
    mcmc.post_warmup_state = mcmc.last_state
    mcmc.run(key)
    return mcmc.get_samples(group_by_chain=True), mcmc.last_state


def _pickled_and_original_continuations(mcmc):
    """Pickle ``mcmc`` after its run, then continue the original and the loaded copy."""
    blob = pickle.dumps(mcmc)
    original = _continue(mcmc, jax.random.PRNGKey(7))
    loaded = pickle.loads(blob)
    return original, _continue(loaded, jax.random.PRNGKey(7)), loaded


@pytest.fixture(scope="module")
def fitted_flow():
    """A flow warmed up by a first run: what `kernel.get_flow(mcmc.last_state)` returns."""
    kernel = FlowMCKernel(model, flow_options=CHEAP_FLOW, **CHEAP)
    mcmc = _mcmc(kernel)
    mcmc.run(jax.random.key(0))
    return kernel.get_flow(mcmc.last_state)


def _kernel(config, fitted_flow):
    if config == "model, default flow":
        return FlowMCKernel(model, flow_options=CHEAP_FLOW, **CHEAP)
    if config == "model, flow from get_flow":
        return FlowMCKernel(model, flow=fitted_flow, fit_flow=False, **CHEAP)
    if config == "potential_fn, default flow":
        return FlowMCKernel(potential_fn=potential_fn, flow_options=CHEAP_FLOW, **CHEAP)
    assert config == "potential_fn, flow from get_flow"
    return FlowMCKernel(potential_fn=potential_fn, flow=fitted_flow, **CHEAP)


@pytest.mark.parametrize(
    "config",
    [
        "model, default flow",
        "model, flow from get_flow",
        "potential_fn, default flow",
        "potential_fn, flow from get_flow",
    ],
)
def test_unpickled_mcmc_continues_exactly_as_the_original(config, fitted_flow):
    # Regression: a kernel holding a user's flow did not pickle (flowjax's local closures),
    # and a `potential_fn` kernel needed `init_params` again after unpickling.
    kernel = _kernel(config, fitted_flow)
    mcmc = _mcmc(kernel)
    mcmc.run(jax.random.key(0), init_params=None if kernel.model else _init_params())
    (draws, last_state), (loaded_draws, loaded_last_state), loaded = (
        _pickled_and_original_continuations(mcmc)
    )
    assert loaded_draws["x"].shape == (NUM_WALKERS, 5, 2)
    assert leaves_equal(loaded_draws, draws)
    assert leaves_equal(loaded_last_state, last_state)
    flow = loaded.sampler.get_flow(loaded_last_state)
    point = jnp.array([0.5, 1.5])
    assert float(flow.log_prob(point)) == float(kernel.get_flow(last_state).log_prob(point))


def test_walkers_split_over_devices_stay_split_after_unpickling():
    # Arrays pickle by value and came back on one device: a continued run left the mesh.
    mesh = data_mesh(2)
    kernel = FlowMCKernel(model, flow_options=CHEAP_FLOW, **CHEAP)
    mcmc = _mcmc(kernel)
    mcmc.run(jax.random.key(0), init_params=put_on_mesh(_init_params(), split_leading_axis(mesh)))
    (draws, _), (loaded_draws, loaded_last_state), _ = _pickled_and_original_continuations(mcmc)
    assert leaves_equal(loaded_draws, draws)
    for leaf in (loaded_draws["x"], loaded_last_state.z["x"], loaded_last_state.rng_key):
        assert len(leaf.sharding.device_set) == 2, leaf.sharding


def test_sample_energy_mcmc_pickles_with_a_trained_flow():
    # What `numpyro-ebm sample` builds: an EBM model (a closure before: it did not pickle) and
    # a trained flow, which is a default flow (see model_io).
    flow = default_flow(jax.random.key(0), 2, loc=0.0, scale=1.5, **CHEAP_FLOW)
    mcmc = sample_energy(
        jax.random.key(2),
        quartic_energy,
        2,
        1.5,
        num_samples=5,
        num_chains=NUM_WALKERS,
        num_warmup=5,
        flow=flow,
        progress_bar=True,
        **CHEAP,
    )
    (draws, _), (loaded_draws, _), _ = _pickled_and_original_continuations(mcmc)
    assert leaves_equal(loaded_draws, draws)


def learned_prior_model(energy):
    theta = numpyro.sample("theta", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
    energy_factor("prior", energy, theta)


def test_mcmc_of_a_model_with_a_loaded_energy_pickles(tmp_path):
    # Regression: `load_energy` returned a local closure, so such an MCMC did not pickle.
    energy = MLPEnergy(2, width=8, depth=1, key=jax.random.key(4))
    preprocessing = Preprocessing(np.array([1.0, -2.0]), np.array([2.0, 0.5]))
    save_model(tmp_path, energy, 1.5, preprocessing=preprocessing)
    loaded_energy = load_energy(tmp_path)
    mcmc = _mcmc(FlowMCKernel(partial(learned_prior_model, loaded_energy), **CHEAP))
    mcmc.run(jax.random.key(5))
    (draws, _), (loaded_draws, _), _ = _pickled_and_original_continuations(mcmc)
    assert leaves_equal(loaded_draws, draws)
    points = np.array([[0.5, -1.0], [3.0, 2.0]])
    unpickled = pickle.loads(pickle.dumps(loaded_energy))
    np.testing.assert_array_equal(unpickled(points), loaded_energy(points))


def test_kernel_with_a_user_flow_pickles_before_init():
    flow = default_flow(jax.random.key(3), 2, loc=1.0, scale=2.0, **CHEAP_FLOW)
    loaded = pickle.loads(pickle.dumps(FlowMCKernel(model, flow=flow, **CHEAP)))
    point = jnp.array([0.5, 1.5])
    assert float(loaded._flow.log_prob(point)) == float(flow.log_prob(point))


def test_a_flow_that_cannot_be_pickled_names_the_remedy():
    # A coupling flow built by hand holds closures no recipe made: a clear error, at pickling.
    flow = coupling_flow(jax.random.key(0), base_dist=StandardNormal((2,)), nn_width=4)
    with pytest.raises(TypeError, match=r"Expected a flow built by .*default_flow.*got one"):
        pickle.dumps(FlowMCKernel(model, flow=flow))


@pytest.mark.parametrize(
    ("dim", "options"),
    [(1, {}), (3, {}), (3, dict(transformer="affine", nn_width=8)), (2, dict(interval=2.0))],
)
def test_default_flows_and_their_static_parts_round_trip(dim, options):
    flow = default_flow(jax.random.key(4), dim, loc=1.0, scale=3.0, **options)
    points = jax.random.normal(jax.random.key(5), (5, dim))
    loaded = loads_flow(dumps_flow(flow))
    assert isinstance(loaded, AbstractDistribution)
    np.testing.assert_array_equal(loaded.log_prob(points), flow.log_prob(points))
    params, static = split_flow(flow)
    rebuilt = merge_flow(params, loads_flow(dumps_flow(static)))
    np.testing.assert_array_equal(rebuilt.log_prob(points), flow.log_prob(points))
    # Flows made only of picklable parts need no recipe.
    normal = Normal(jnp.ones(dim))
    np.testing.assert_array_equal(
        loads_flow(dumps_flow(normal)).log_prob(points), normal.log_prob(points)
    )
