"""Raw ``uint32`` keys (``jax.random.PRNGKey``) work wherever a key enters the public API.

NumPyro's examples use raw keys; flowjax needs typed ones (``jax.random.key``). Every public
function converts at the boundary with ``numpyro_ebm._checks.typed_key``, so a raw key and a
typed key with the same data give the same result: each test runs both kinds and compares.
Settings are the cheapest that reach the code path (compilation dominates on 2 CPU cores).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from _trees import leaves_equal
from flowjax.distributions import Normal
from numpyro.infer import MCMC

from numpyro_ebm import FlowMCKernel, MLPEnergy, TrainConfig, Trainer, get_dataset, list_datasets
from numpyro_ebm._checks import typed_key
from numpyro_ebm.flows import default_flow, fit_flow, flow_optimizer, split_flow
from numpyro_ebm.samplers import imh_step, init_walkers, isir_step, mala_step, ula_step
from numpyro_ebm.training import PCD, make_negative_sampler, sample_energy

KEY_KINDS = {"typed": jax.random.key, "raw": jax.random.PRNGKey}


def _potential(x):
    return 0.5 * x @ x


def _both_kinds(fn, seed=0):
    """``fn(key)`` for a typed and a raw key with the same data."""
    return fn(KEY_KINDS["typed"](seed)), fn(KEY_KINDS["raw"](seed))


# -- The helper ----------------------------------------------------------------------------


def test_typed_key_converts_raw_keys_and_keeps_typed_ones():
    typed = jax.random.key(3)
    assert typed_key(typed) is typed
    converted = typed_key(jax.random.PRNGKey(3))
    assert jnp.issubdtype(converted.dtype, jax.dtypes.prng_key) and converted.shape == ()
    assert leaves_equal(converted, typed)
    # Traced keys too (the samplers convert inside jit and scan).
    assert leaves_equal(jax.jit(typed_key)(jax.random.PRNGKey(3)), typed)


@pytest.mark.parametrize(
    ("key", "given"),
    [
        (0, "got int 0"),
        (jnp.zeros(2), "got an array of dtype float32 and shape (2,)"),
        (jnp.zeros(3, jnp.uint32), "got an array of dtype uint32 and shape (3,)"),
        (jax.random.split(jax.random.PRNGKey(0), 2), "dtype uint32 and shape (2, 2)"),
        (jax.random.split(jax.random.key(0), 2), "dtype key<fry> and shape (2,)"),
    ],
)
def test_typed_key_names_what_it_expected_and_got(key, given):
    with pytest.raises(TypeError, match=r"typed key of shape \(\).*raw uint32 key") as info:
        typed_key(key)
    assert given in str(info.value)


# -- Pure samplers and flows ---------------------------------------------------------------


def test_local_moves_accept_both_key_kinds():
    walkers = init_walkers(jnp.ones((4, 2)), _potential)
    for step in (mala_step, ula_step):
        typed, raw = _both_kinds(lambda key, step=step: step(key, walkers, _potential, 0.1))
        assert leaves_equal(typed, raw), step.__name__


def test_global_moves_accept_both_key_kinds():
    # Regression: flowjax refused raw keys ("New-style typed JAX PRNG keys required").
    position = jnp.ones((4, 2))
    energy = jax.vmap(_potential)(position)
    flow = Normal(jnp.zeros(2))
    typed, raw = _both_kinds(
        lambda key: isir_step(
            key, position, energy, flow, _potential, num_particles=4, chunk_size=2
        )
    )
    assert leaves_equal(typed, raw)
    typed, raw = _both_kinds(lambda key: imh_step(key, position, energy, flow, _potential))
    assert leaves_equal(typed, raw)


def test_flows_accept_both_key_kinds():
    typed_flow, raw_flow = _both_kinds(lambda key: default_flow(key, 2))
    assert leaves_equal(split_flow(typed_flow)[0], split_flow(raw_flow)[0])
    params, static = split_flow(typed_flow)
    optimizer = flow_optimizer(1e-2)
    points = jax.random.normal(jax.random.key(1), (32, 2))
    typed, raw = _both_kinds(
        lambda key: fit_flow(
            key,
            params,
            optimizer.init(params),
            static,
            points,
            optimizer=optimizer,
            num_steps=2,
            batch_size=8,
        )
    )
    assert leaves_equal(typed, raw)


def test_datasets_and_energies_accept_both_key_kinds():
    for name in list_datasets("density"):
        dataset = get_dataset(name)
        typed, raw = _both_kinds(lambda key, dataset=dataset: dataset.sample(key, 5))
        assert leaves_equal(typed, raw), name
    typed, raw = _both_kinds(lambda key: MLPEnergy(2, width=4, depth=1, key=key))
    assert leaves_equal(eqx.filter(typed, eqx.is_array), eqx.filter(raw, eqx.is_array))


# -- The kernel under NumPyro's MCMC ---------------------------------------------------------


def _model():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]))


def _cheap_mcmc():
    kernel = FlowMCKernel(
        _model,
        flow=Normal(jnp.zeros(2), 3.0 * jnp.ones(2)),
        num_particles=4,
        num_local_steps=1,
        num_fit_steps=2,
        fit_batch_size=16,
    )
    return MCMC(
        kernel,
        num_warmup=5,
        num_samples=5,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )


@pytest.fixture(scope="module")
def mcmc_runs():
    """A warm-up then a run, with keys of each kind; the run continues with the other kind."""
    runs = {}
    for kind, other in (("typed", "raw"), ("raw", "typed")):
        mcmc = _cheap_mcmc()
        mcmc.warmup(KEY_KINDS[kind](0))
        warm_key = mcmc.post_warmup_state.rng_key
        mcmc.run(KEY_KINDS[kind](1))
        first = mcmc.get_samples()
        mcmc.post_warmup_state = mcmc.last_state
        mcmc.run(KEY_KINDS[other](2))
        runs[kind] = (warm_key, first, mcmc.last_state.rng_key, mcmc.get_samples())
    return runs


def test_mcmc_runs_with_a_raw_key_and_draws_as_with_a_typed_one(mcmc_runs):
    # Regression: `MCMC(FlowMCKernel(model), ...).run(jax.random.PRNGKey(0))` crashed at the
    # first global move.
    assert leaves_equal(mcmc_runs["typed"][1], mcmc_runs["raw"][1])
    assert leaves_equal(mcmc_runs["typed"][3], mcmc_runs["raw"][3])


def test_kernel_state_holds_the_same_key_data_for_either_kind(mcmc_runs):
    # NumPyro puts the user's key into `state.rng_key` (and replaces it on continuation):
    # whichever kind it was given, the kernel carries the same key data, one key per walker.
    for index in (0, 2):  # after the warm-up, and after a continuation with the other kind
        typed, raw = mcmc_runs["typed"][index], mcmc_runs["raw"][index]
        assert len(typed) == len(raw) == 4
        assert leaves_equal(typed, raw)
        typed_key(typed[0])  # a valid single key


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_mcmc_runs_with_typed_keys_of_another_prng_implementation(impl):
    # Regression: the state holds raw key data, which was re-wrapped as JAX's default
    # implementation, so keys of shape (4,) crashed at the first iteration (NUTS takes them).
    mcmc = _cheap_mcmc()
    mcmc.run(jax.random.key(0, impl=impl))
    assert mcmc.get_samples()["x"].shape[0] == 4 * 5
    again = _cheap_mcmc()
    again.run(jax.random.key(0, impl=impl))
    assert leaves_equal(again.get_samples(), mcmc.get_samples())  # reproducible
    assert str(jax.random.key_impl(typed_key(mcmc.last_state.rng_key[0], impl))) == impl


def test_a_raw_key_numpyro_does_not_split_gets_a_clear_error():
    # Under jax_default_prng_impl="rbg", `jax.random.PRNGKey(0)` has shape (4,) and NumPyro's
    # MCMC hands it to the kernel unsplit; its first element used to be split as a key (JAX:
    # "invalid PRNG key data: expected key_data.ndim >= 1"). The typed key of the same
    # implementation runs (test above).
    with jax.default_prng_impl("rbg"):
        with pytest.raises(ValueError, match=r"single raw key of shape \(4,\).*jax.random.key"):
            _cheap_mcmc().run(jax.random.PRNGKey(0))


# -- Training and sampling trained models --------------------------------------------------


@pytest.mark.parametrize("name", ["flowmc", "mala", "ula", "nt"])
def test_negative_samplers_accept_both_key_kinds(name):
    energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
    params = eqx.filter(energy, eqx.is_array)
    options = {
        "flowmc": dict(num_particles=4, num_local_steps=1, fit_batch_size=8),
        "mala": dict(num_local_steps=1),
        "ula": dict(num_steps=1),
        "nt": dict(num_steps=1, fit_batch_size=8),
    }[name]
    sampler = make_negative_sampler(name, energy, 2, 1.0, **options)
    positions = jax.random.normal(jax.random.key(1), (4, 2))
    step = jax.jit(sampler.step)
    typed, raw = _both_kinds(
        lambda key: sampler.positions(step(sampler.init(key, positions, params), params)[0])
    )
    assert leaves_equal(typed, raw)


def test_trainer_state_with_a_raw_key_trains_as_with_a_typed_one():
    config = TrainConfig(
        objective=PCD(sampler="ula", num_walkers=8),
        num_epochs=1,
        steps_per_epoch=2,
        batch_size=8,
        energy_width=4,
        energy_depth=1,
        num_data=64,
        grid_points=10,
    )
    trainer = Trainer("two-modes-2to1", config)
    state = trainer.init_state()
    raw_state = state._replace(rng_key=jax.random.key_data(state.rng_key))
    typed = trainer.fit(state, progress_bar=False).state
    raw = trainer.fit(raw_state, progress_bar=False).state
    assert leaves_equal(typed.energy_params, raw.energy_params)
    assert not jnp.issubdtype(raw.rng_key.dtype, jax.dtypes.prng_key)


def test_sample_energy_accepts_both_key_kinds():
    typed, raw = _both_kinds(
        lambda key: sample_energy(
            key,
            lambda x: jnp.sum(x**2),
            2,
            1.0,
            num_samples=3,
            num_chains=4,
            num_warmup=3,
            flow=Normal(jnp.zeros(2)),
            num_particles=4,
            num_local_steps=1,
        ).get_samples()
    )
    assert leaves_equal(typed, raw)
    with pytest.raises(TypeError, match="got int 0"):
        sample_energy(0, lambda x: jnp.sum(x**2), 2, 1.0, num_samples=3)


@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.PRNGKey(0)])
def test_a_key_given_as_the_trainer_seed_is_named(key):
    # Regression: a typed key failed inside NumPy ("JAX array with PRNGKey dtype cannot be
    # converted"); the trainer takes an integer seed, as the command line does.
    with pytest.raises(ValueError, match=r"(?s)`seed` must be an integer .*\(a PRNG key: pass the"):
        TrainConfig(seed=key)
    with pytest.raises(ValueError, match=r"got \[1, 2\]\.$"):  # not a key: no hint
        TrainConfig(seed=[1, 2])
