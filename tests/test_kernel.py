"""``FlowMCKernel`` through NumPyro's ``MCMC``: contracts (STYLE.md layer 1) and NumPyro features.

Compilation dominates the cost on 2 CPU cores, so most runs use a cheap flowjax ``Normal`` flow
(an affine flow, still fitted by maximum likelihood during warm-up) and share module fixtures;
the default (affine coupling) flow runs in ``test_mcse.py`` (shared through ``_targets``) and
here in the pickling test. Statistical checks state their false-alarm rate.
"""

import contextlib
import io
import pickle
import re
import warnings
from types import SimpleNamespace

import arviz as az
import arviz_stats
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _targets import (
    GAUSS_COV,
    GAUSS_MEAN,
    gaussian_potential,
    mixture_flowmc_run,
    two_sided_z,
    vectorized_mcmc,
)
from _trees import leaves_equal
from flowjax.distributions import AbstractDistribution, Normal
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from numpyro.infer import MCMC
from numpyro.infer.initialization import init_to_median, init_to_value

from numpyro_ebm import FlowMCKernel, FlowMCState
from numpyro_ebm.flows import default_flow, split_flow
from numpyro_ebm.health import check_run

# Family-wise false-alarm rate of each statistical test in this file.
ALPHA = 1e-3
NUM_WALKERS = 32  # even: the walkers split over the 2 fake CPU devices
NUM_WARMUP = 100
NUM_SAMPLES = 100
LOGNORMAL_SCALE = 0.5


def gauss_model():
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(GAUSS_MEAN), jnp.asarray(GAUSS_COV)))
    numpyro.sample("s", dist.LogNormal(0.0, LOGNORMAL_SCALE))  # constrained: s > 0


def _wide_flow(dim):
    """An affine flow, deliberately too wide: fitting must move it."""
    return Normal(jnp.zeros(dim), 3.0 * jnp.ones(dim))


# Cheap settings shared by the runs of this file: few particles, short flow fits.
# Learning rate 1e-2: Adam moves each parameter by ~lr per step, and warm-up here is short.
FAST = dict(
    num_particles=8, num_local_steps=3, num_fit_steps=5, fit_batch_size=64, learning_rate=1e-2
)


def _mcmc(kernel, num_walkers=NUM_WALKERS, num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, **kw):
    # With the progress bar, NumPyro jits one iteration and reuses it across runs of the same
    # MCMC (warm-up, sampling, continuations); without it, NumPyro recompiles the whole loop at
    # every run (NUTS alike), ~8 s each on 2 busy cores. So the bar is on unless a test says so.
    return vectorized_mcmc(
        kernel,
        num_warmup,
        num_samples,
        num_walkers,
        progress_bar=kw.pop("progress_bar", True),
        **kw,
    )


# NumPyro turns its bar off under CI; with it on, continuations reuse one compilation.
pytestmark = pytest.mark.usefixtures("progress_bar_allowed")


def _count_sample_calls(kernel):
    """Count Python calls of ``kernel.sample``: under ``MCMC`` each one is a (re)trace."""
    calls = [0]
    sample = kernel.sample

    def counted(*args, **kwargs):
        calls[0] += 1
        return sample(*args, **kwargs)

    kernel.sample = counted
    return calls


def _mcse_z(draws, truth):
    """(mean − truth) / MCSE with ArviZ's MCSE over (walker, draw)."""
    draws = np.asarray(draws, np.float64)
    return (draws.mean() - truth) / arviz_stats.mcse(draws)


@pytest.fixture(scope="module")
def warm():
    """Warm-up, then sampling, on the Gaussian + log-normal model (a counted kernel)."""
    flow = _wide_flow(3)
    kernel = FlowMCKernel(gauss_model, flow=flow, **FAST)
    calls = _count_sample_calls(kernel)
    mcmc = _mcmc(kernel)
    mcmc.warmup(jax.random.key(0))
    post_warmup_state = mcmc.post_warmup_state
    mcmc.run(jax.random.key(1))
    return SimpleNamespace(
        kernel=kernel,
        mcmc=mcmc,
        calls=calls,
        initial_flow_params=split_flow(flow)[0],
        post_warmup_state=post_warmup_state,
        last_state=mcmc.last_state,
        samples=mcmc.get_samples(group_by_chain=True),
        extra=mcmc.get_extra_fields(group_by_chain=True),
    )


# -- Constructor and init errors -----------------------------------------------------------


def _potential(z):
    return gaussian_potential(z["x"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model=gauss_model, potential_fn=_potential), "exactly one.*got both"),
        (dict(), "exactly one.*got neither"),
        (dict(model=gauss_model, global_move="mh"), "'isir', 'imh' or 'none', got 'mh'"),
        (dict(model=gauss_model, num_particles=1), "num_particles.*>= 2, got 1"),
        (dict(model=gauss_model, flow_seed=2**32), r"flow_seed.*\[0, 2\*\*32\), got 4294967296"),
        (dict(model=gauss_model, num_particles=8.0), "num_particles.*integer.*got 8.0"),
        (dict(model=gauss_model, num_local_steps=-1), "num_local_steps.*>= 0, got -1"),
        (
            dict(model=gauss_model, global_move="none", num_local_steps=0),
            "never move.*global_move='none' and num_local_steps=0",
        ),
        (dict(model=gauss_model, fit_every=0), "fit_every.*>= 1, got 0"),
        (dict(model=gauss_model, num_fit_steps=0), "num_fit_steps.*>= 1, got 0"),
        (dict(model=gauss_model, fit_batch_size=0), "fit_batch_size.*>= 1, got 0"),
        (dict(model=gauss_model, buffer_size=0), "buffer_size.*>= 1, got 0"),
        (dict(model=gauss_model, particle_chunk_size=0), "particle_chunk_size.*>= 1, got 0"),
        (dict(model=gauss_model, memory_budget_bytes=0), "memory_budget_bytes.*>= 1, got 0"),
        (dict(model=gauss_model, step_size=0.0), "step_size.*positive.*got 0.0"),
        (dict(model=gauss_model, target_accept_prob=1.0), r"\(0, 1\), got 1.0"),
        (dict(model=gauss_model, learning_rate=-1e-3), "learning_rate.*positive.*, got -0.001"),
        # Strings, infinities and booleans failed in a comparison or were taken as numbers.
        (dict(model=gauss_model, learning_rate="1e-3"), "learning_rate.*got '1e-3'"),
        (dict(model=gauss_model, learning_rate=float("inf")), "learning_rate.*finite.*got inf"),
        (dict(model=gauss_model, learning_rate=True), "learning_rate.*got True"),
        (dict(model=gauss_model, target_accept_prob="0.5"), r"\(0, 1\), got '0.5'"),
        (dict(model=gauss_model, target_accept_prob=None), r"\(0, 1\), got None"),
        # Truthy non-booleans were taken as True ("no" too).
        (dict(model=gauss_model, dense_preconditioner="no"), "True or False, got 'no'"),
        (dict(model=gauss_model, fit_flow=0), "fit_flow.*True or False, got 0"),
        (dict(model=gauss_model, adapt_num_particles=None), "True or False, got None"),
        # Values of the default flow's options were checked only when `MCMC.run` built it.
        (dict(model=gauss_model, flow_options={"transformer": "maf"}), "'spline' or 'affine'"),
        (dict(model=gauss_model, flow_options={"nn_width": 0}), "nn_width.*>= 1, got 0"),
        (dict(model=gauss_model, flow_options={"nn_depth": -1}), "nn_depth.*>= 0, got -1"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowMCKernel(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # Accepted, then a failure inside NumPyro or the kernel at the first run.
        (dict(model="model"), "`model` must be callable.*got str"),
        (dict(potential_fn=jnp.ones(2)), "`potential_fn` must be callable.*got ArrayImpl"),
        (dict(model=gauss_model, flow_options=["transformer"]), "flow_options.*dict.*got list"),
    ],
)
def test_constructor_rejects_arguments_of_the_wrong_type(kwargs, match):
    with pytest.raises(TypeError, match=match):
        FlowMCKernel(**kwargs)


def test_an_integer_as_the_key_is_a_clear_error():
    # MCMC.run(0) failed with "'int' object has no attribute 'shape'".
    mcmc = _mcmc(FlowMCKernel(gauss_model, **FAST), num_walkers=4, num_warmup=1, num_samples=1)
    with pytest.raises(TypeError, match=r"PRNG key .* got int 0"):
        mcmc.run(0)


def test_constructor_takes_numbers_as_0d_arrays_as_numpyro_kernels_do():
    # `step_size=jnp.array(0.1)` was refused as "must be a positive finite number, got
    # Array(0.1)"; NUTS takes it. The settings are stored as Python numbers.
    kernel = FlowMCKernel(
        gauss_model,
        step_size=jnp.array(0.1),
        num_particles=jnp.array(8),
        dense_preconditioner=np.bool_(True),
        flow_options={"nn_width": np.int64(8)},
    )
    assert kernel._step_size == pytest.approx(0.1) and type(kernel._step_size) is float
    assert kernel._chunk_options["num_particles"] == 8
    assert kernel._round_options["dense_preconditioner"] is True


def test_constructor_rejects_an_init_strategy_that_is_not_one():
    # It was NumPyro's "Only one of data or substitute_fn should be provided", at `MCMC.run`.
    with pytest.raises(TypeError, match=r"init_strategy.*init_to_sample.*got None"):
        FlowMCKernel(gauss_model, init_strategy=None)


def test_constructor_rejects_a_flow_that_is_not_a_distribution():
    with pytest.raises(TypeError, match="flowjax distribution, got str"):
        FlowMCKernel(gauss_model, flow="spline")


def test_constructor_rejects_an_unknown_flow_option():
    # Regression: a misspelt option raised default_flow's TypeError only inside `MCMC.run`.
    with pytest.raises(TypeError, match=r"expected some of \[.*'nn_width'.*got \['nn_widht'\]"):
        FlowMCKernel(gauss_model, flow_options={"nn_widht": 64})


@pytest.mark.parametrize(
    ("num_chains", "chain_method"),
    [(1, "vectorized"), (2, "sequential"), (2, "parallel")],
)
def test_run_rejects_single_chains_and_other_chain_methods(num_chains, chain_method):
    mcmc = MCMC(
        FlowMCKernel(gauss_model),
        num_warmup=2,
        num_samples=2,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=False,
    )
    with pytest.raises(ValueError, match=r"chain_method='vectorized'.*W >= 2"):
        mcmc.run(jax.random.key(0))


def _parameter_shapes(flow):
    return [leaf.shape for leaf in jax.tree.leaves(split_flow(flow)[0])]


@pytest.mark.parametrize(
    ("flow_options", "built"), [({}, "affine"), ({"transformer": "spline"}, "spline")]
)
def test_the_default_flow_is_affine_coupling_unless_the_options_say_spline(flow_options, built):
    kernel = FlowMCKernel(gauss_model, flow_options=flow_options, **FAST)
    mcmc = _mcmc(kernel, num_warmup=10, num_samples=5, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    # Inside the preconditioning map, a coupling flow over the 3 coordinates (x and log s).
    inner = kernel.get_flow(mcmc.last_state).base_dist
    other = {"affine": "spline", "spline": "affine"}[built]
    assert _parameter_shapes(inner) == _parameter_shapes(
        default_flow(jax.random.key(0), 3, transformer=built)
    )
    assert _parameter_shapes(inner) != _parameter_shapes(
        default_flow(jax.random.key(0), 3, transformer=other)
    )
    assert np.all(np.isfinite(np.asarray(mcmc.get_samples()["x"])))


def test_potential_fn_needs_init_params():
    mcmc = _mcmc(FlowMCKernel(potential_fn=_potential), num_walkers=4)
    with pytest.raises(ValueError, match=r"`init_params`.*must be passed.*got None"):
        mcmc.run(jax.random.key(0))


def test_init_params_need_the_walker_axis():
    kernel = FlowMCKernel(potential_fn=lambda z: _potential(z) + jnp.sum(z["y"] ** 2))
    # MCMC checks the first leaf; the kernel checks every leaf.
    with pytest.raises(ValueError, match="same leading dimension"):
        _mcmc(kernel, num_walkers=4).run(
            jax.random.key(0), init_params={"x": jnp.zeros((3, 2)), "y": jnp.zeros(4)}
        )
    with pytest.raises(ValueError, match=r"num_chains=4; got a leaf of shape \(3,\)"):
        _mcmc(kernel, num_walkers=4).run(
            jax.random.key(0), init_params={"x": jnp.zeros((4, 2)), "y": jnp.zeros(3)}
        )


@pytest.mark.parametrize(
    ("init_params", "detail"),
    [
        ({"x": jnp.zeros((4, 2))}, r"missing \['s'\], unknown \[\]"),
        ({"x": jnp.zeros((4, 2)), "S": jnp.ones(4)}, r"missing \['s'\], unknown \['S'\]"),
        ({"x": jnp.zeros((4, 2)), "s": jnp.ones(4), "t": jnp.ones(4)}, r"unknown \['t'\]"),
        ({"x": jnp.zeros((4, 3)), "s": jnp.ones(4)}, r"wrong per-walker shape: \['x'\]"),
        (jnp.zeros((4, 3)), r"type ArrayImpl with per-walker shapes \(3,\)"),
    ],
)
def test_init_params_that_do_not_fit_the_model_name_its_sites(init_params, detail):
    # Regression: a bare AssertionError (missing or misspelt site), a TypeError (a flat array),
    # or an extra site accepted and left to random-walk to ±1e6.
    mcmc = _mcmc(FlowMCKernel(gauss_model), num_walkers=4)
    with pytest.raises(ValueError, match=r"expected the sites \{'s': \(\), 'x': \(2,\)\}") as info:
        mcmc.run(jax.random.key(0), init_params=init_params)
    assert re.search(detail, str(info.value))


def test_integer_init_params_are_a_clear_error():
    # Regression: "cond branches must have equal output types" from inside the round.
    kernel = FlowMCKernel(potential_fn=_potential)
    with pytest.raises(TypeError, match=r"expected floating-point values; got .* dtype int32"):
        _mcmc(kernel, num_walkers=4).run(
            jax.random.key(0), init_params={"x": jnp.arange(8).reshape(4, 2) % 3}
        )


def _observed_only_model():
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=1.0)


def _empty_latent_model():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([0]))


@pytest.mark.parametrize(
    ("model", "shapes"), [(_observed_only_model, "{}"), (_empty_latent_model, "{'x': (0,)}")]
)
def test_model_without_latent_sites_is_a_clear_error(model, shapes):
    # Regression: an internal vmap error ("vmap wrapped function must be passed at least one
    # argument containing an array").
    mcmc = _mcmc(FlowMCKernel(model), num_walkers=4, num_warmup=2, num_samples=2)
    with pytest.raises(ValueError, match="at least one latent") as info:
        mcmc.run(jax.random.key(0))
    assert f"got none (latent sites and their shapes: {shapes}; discrete sites" in str(info.value)


def test_init_params_without_coordinates_is_a_clear_error():
    kernel = FlowMCKernel(potential_fn=lambda z: jnp.sum(z["x"]))
    with pytest.raises(ValueError, match=r"at least one coordinate.*got per-walker shapes"):
        kernel.init(jax.random.split(jax.random.key(0), 4), 0, {"x": jnp.zeros((4, 0))})


def test_get_flow_needs_init():
    with pytest.raises(ValueError, match="not been initialised"):
        FlowMCKernel(gauss_model).get_flow(None)


def test_init_strategy_places_the_walkers():
    values = {"x": jnp.array([0.3, -0.2]), "s": jnp.array(2.0)}
    kernel = FlowMCKernel(
        gauss_model, flow=_wide_flow(3), init_strategy=init_to_value(values=values)
    )
    state = kernel.init(jax.random.split(jax.random.key(0), 4), 0, None, (), {})
    np.testing.assert_allclose(state.z["x"], np.tile(values["x"], (4, 1)), rtol=1e-6)
    np.testing.assert_allclose(state.z["s"], np.full(4, np.log(2.0)), rtol=1e-6)  # unconstrained
    # The default, init_to_uniform, spreads the walkers over (−2, 2) in the unconstrained space.
    state = FlowMCKernel(gauss_model, flow=_wide_flow(3)).init(
        jax.random.split(jax.random.key(0), 4), 0, None, (), {}
    )
    assert len(np.unique(np.asarray(state.z["s"]))) == 4
    assert bool(jnp.all(jnp.abs(state.z["x"]) < 2))


# -- Memory budget -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "chunk_size", "adaptive", "expected"),
    # 64 walkers × 4 coordinates × 4 bytes × 8 arrays = 8 KiB of scratch per fresh particle.
    # Adapting the particle count, the 31 fresh particles come in chunks of at most 4 (eighths).
    [
        (2**16, None, False, None),
        (100_000, None, False, None),
        (1, None, True, 1),
        (2**40, None, False, 31),
        (2**40, None, True, 4),
        (2**20, 5, True, 5),
    ],
)
def test_particle_chunk_respects_the_memory_budget(budget, chunk_size, adaptive, expected):
    num_walkers, dim, num_particles = 64, 4, 32
    kernel = FlowMCKernel(
        potential_fn=lambda x: 0.5 * x @ x,
        flow=_wide_flow(dim),
        num_particles=num_particles,
        memory_budget_bytes=budget,
        particle_chunk_size=chunk_size,
        adapt_num_particles=adaptive,
    )
    over_budget = budget < 8 * 1024  # not even one particle fits: said, not silent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel.init(
            jax.random.split(jax.random.key(0), num_walkers), 0, jnp.zeros((num_walkers, dim))
        )
    said = [str(w.message) for w in caught if "more than memory_budget_bytes" in str(w.message)]
    assert len(said) == int(over_budget)
    chunk = kernel._config.chunk_size
    assert 1 <= chunk <= num_particles - 1
    if expected is not None:
        assert chunk == expected
    else:
        # The scratch estimate of the kernel (see test_samplers' compiled-memory check) fits the
        # budget, and one more particle per chunk would not.
        from numpyro_ebm._kernel_setup import _SCRATCH_ARRAYS_PER_PARTICLE

        per_particle = num_walkers * dim * 4 * _SCRATCH_ARRAYS_PER_PARTICLE
        assert chunk * per_particle <= budget < (chunk + 1) * per_particle


# -- Shapes, fields, constrained sites, ArviZ ----------------------------------------------


def test_samples_and_fields_have_the_walker_axis_first(warm):
    assert warm.samples["x"].shape == (NUM_WALKERS, NUM_SAMPLES, 2)
    assert warm.samples["s"].shape == (NUM_WALKERS, NUM_SAMPLES)
    assert warm.mcmc.get_samples()["x"].shape == (NUM_WALKERS * NUM_SAMPLES, 2)
    assert set(warm.extra) == {
        "potential_energy",
        "accept_prob",
        "global_accept_prob",
        "num_nonfinite",
        "stranded",
    }
    for name, value in warm.extra.items():
        assert value.shape == (NUM_WALKERS, NUM_SAMPLES), name
        assert bool(jnp.all(jnp.isfinite(value))), name
    assert isinstance(warm.last_state, FlowMCState)
    assert warm.samples["x"].dtype == jnp.float32 and warm.last_state.step_size.dtype == jnp.float32
    assert 0.0 < float(warm.extra["global_accept_prob"].mean()) < 1.0


def test_constrained_site_is_positive_with_the_right_moments(warm):
    s = np.asarray(warm.samples["s"], np.float64)
    assert (s > 0).all()
    # The walkers live in the unconstrained space (log s); `postprocess_fn` maps them back.
    unconstrained = np.asarray(warm.last_state.z["s"])
    assert (unconstrained < 0).any()
    np.testing.assert_allclose(np.exp(unconstrained), s[:, -1], rtol=1e-5)
    # log s ~ N(0, 0.5²) and E s = exp(0.5²/2); 4 MCSE z-tests share ALPHA.
    z = two_sided_z(ALPHA, 4)
    assert abs(_mcse_z(np.log(s), 0.0)) < z
    assert abs(_mcse_z(s, np.exp(LOGNORMAL_SCALE**2 / 2))) < z
    for i in range(2):
        assert abs(_mcse_z(warm.samples["x"][..., i], GAUSS_MEAN[i])) < z


def test_arviz_sees_one_chain_per_walker_and_the_extra_fields(warm):
    idata = az.from_numpyro(warm.mcmc)
    extra = warm.mcmc.get_extra_fields(group_by_chain=True)  # the latest run of the fixture
    posterior = idata["posterior"]
    assert posterior["x"].sizes["chain"] == NUM_WALKERS
    assert posterior["x"].sizes["draw"] == NUM_SAMPLES
    stats = idata["sample_stats"]
    for name in ("lp", "acceptance_rate", "global_accept_prob", "num_nonfinite"):
        assert name in stats, name
    np.testing.assert_allclose(stats["lp"].values, -np.asarray(extra["potential_energy"]))
    np.testing.assert_allclose(stats["acceptance_rate"].values, np.asarray(extra["accept_prob"]))
    summary = az.summary(idata)
    assert len(summary) == 3  # x[0], x[1], s
    assert np.isfinite(np.asarray(summary.filter(like="ess").values, float)).all()


def test_diagnostics_string_shows_local_and_global_acceptance(warm):
    text = warm.kernel.get_diagnostics_str(warm.last_state)
    assert "local acc." in text and "global acc." in text


# -- Warm-up, frozen flow, continuation, reproducibility -----------------------------------


def test_post_warmup_state_carries_the_fitted_flow_and_step_size(warm):
    pw, last = warm.post_warmup_state, warm.last_state
    assert set(np.asarray(pw.i)) == {NUM_WARMUP}
    assert set(np.asarray(last.i)) == {NUM_WARMUP + NUM_SAMPLES}
    # Warm-up fitted the flow and adapted the step size and the preconditioner ...
    assert not leaves_equal(pw.adaptation.flow_params, warm.initial_flow_params)
    assert float(pw.step_size[0]) != pytest.approx(0.1)
    # The walkers' moments: unconstrained (log s, x) have means (0, GAUSS_MEAN) and
    # standard deviations (LOGNORMAL_SCALE, sqrt(diag GAUSS_COV)); loose bands, 32 walkers.
    loc, scale = pw.adaptation.preconditioner
    np.testing.assert_allclose(loc, [0.0, *GAUSS_MEAN], atol=0.5)
    expected_scale = [LOGNORMAL_SCALE, *np.sqrt(np.diag(GAUSS_COV))]
    np.testing.assert_allclose(scale, expected_scale, rtol=0.5)
    # ... and sampling froze them, with dual averaging's averaged step size.
    assert leaves_equal(
        last.adaptation._replace(round_index=0), pw.adaptation._replace(round_index=0)
    )
    assert set(np.asarray(last.step_size)) == {float(pw.adaptation.step_size_average)}
    # The adapted step size gives a local acceptance near the 0.574 target (loose band:
    # dual averaging over 100 rounds, and the acceptance varies over the target).
    assert 0.35 < float(warm.extra["accept_prob"].mean()) < 0.8
    flow = warm.kernel.get_flow(pw)
    assert isinstance(flow, AbstractDistribution) and flow.shape == (3,)
    # The fitted flow sits on the target, not on the initial N(0, 3²) (unconstrained x, log s).
    np.testing.assert_allclose(flow.bijection.loc[1:], GAUSS_MEAN, atol=0.5)


def test_continuation_from_last_state_is_reproducible_and_not_retraced(warm):
    mcmc = warm.mcmc
    calls_before = warm.calls[0]
    assert calls_before >= 1  # the counter sees the traces of the fixture's runs
    draws = []
    for _ in range(2):
        mcmc.post_warmup_state = warm.last_state
        mcmc.run(warm.last_state.rng_key)
        draws.append(mcmc.get_samples(group_by_chain=True))
        assert int(mcmc.last_state.i[0]) == NUM_WARMUP + 2 * NUM_SAMPLES
        assert leaves_equal(
            mcmc.last_state.adaptation.flow_params, warm.post_warmup_state.adaptation.flow_params
        )
    # Same key, same result; no new trace of the kernel on the later runs.
    assert leaves_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0]["x"], warm.samples["x"])
    assert warm.calls[0] == calls_before


def test_continuing_with_the_last_key_draws_what_one_longer_run_draws(warm):
    # NumPyro's idiom, `mcmc.run(mcmc.last_state.rng_key)`, hands an ensemble kernel the first
    # walker's key. It was split into new walker keys, so the continuation left the stream of
    # one longer run; NUTS's continuation draws exactly what the longer run does.
    mcmc = warm.mcmc
    mcmc.post_warmup_state = warm.last_state
    mcmc.run(warm.last_state.rng_key)
    continued = mcmc.get_samples(group_by_chain=True)["x"]
    longer = _mcmc(
        FlowMCKernel(gauss_model, flow=_wide_flow(3), **FAST), num_samples=2 * NUM_SAMPLES
    )
    longer.warmup(jax.random.key(0))
    longer.run(jax.random.key(1))
    np.testing.assert_array_equal(
        longer.get_samples(group_by_chain=True)["x"][:, NUM_SAMPLES:], continued
    )
    mcmc.post_warmup_state = warm.last_state  # the control: another key, another stream
    mcmc.run(jax.random.key(2))
    assert not np.array_equal(mcmc.get_samples(group_by_chain=True)["x"], continued)


def test_mcmc_objects_sharing_a_kernel_each_keep_their_own_warm_up():
    # The warm-up length lived on the kernel: a second MCMC initialising the same kernel with
    # a longer warm-up made the first one adapt (step size, preconditioner, flow) through all
    # its kept draws, silently. As with NUTS, it lives in the state now.
    kernel = FlowMCKernel(gauss_model, **FAST)
    first = _mcmc(kernel, num_walkers=16, num_warmup=20, num_samples=30)
    first.warmup(jax.random.key(0))
    _mcmc(kernel, num_walkers=16, num_warmup=200, num_samples=2).run(jax.random.key(1))
    first.run(first.post_warmup_state.rng_key, extra_fields=("step_size",))
    assert np.unique(np.asarray(first.get_extra_fields()["step_size"])).size == 1
    assert leaves_equal(
        first.last_state.adaptation.flow_params, first.post_warmup_state.adaptation.flow_params
    )


def test_prefitted_flow_is_reused_and_kept_when_fitting_is_off(warm):
    flow = warm.kernel.get_flow(warm.post_warmup_state)
    kernel = FlowMCKernel(gauss_model, flow=flow, fit_flow=False, **FAST)
    mcmc = _mcmc(kernel, num_warmup=20, num_samples=20)
    mcmc.run(jax.random.key(2))
    assert leaves_equal(
        mcmc.last_state.adaptation.flow_params, warm.post_warmup_state.adaptation.flow_params
    )
    # The fitted proposal is good from the first iteration: i-SIR moves most walkers.
    assert float(mcmc.get_extra_fields()["global_accept_prob"].mean()) > 0.5


# -- jit_model_args, thinning, progress bar ------------------------------------------------

DATA_SIZE = 20


def data_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _posterior_mean(y):
    # Conjugate normal: prior N(0, 10²), unit noise.
    return np.sum(y) / (len(y) + 1 / 100)


@pytest.fixture(scope="module")
def data_runs():
    """Two runs on different data with jit_model_args, thinning 2 and the progress bar."""
    kernel = FlowMCKernel(data_model, flow=_wide_flow(1), **FAST)
    calls = _count_sample_calls(kernel)
    data = [
        1.0 + jax.random.normal(jax.random.key(3), (DATA_SIZE,)),
        -2.0 + jax.random.normal(jax.random.key(4), (DATA_SIZE,)),
    ]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        mcmc = _mcmc(kernel, num_walkers=16, num_warmup=50, num_samples=60, thinning=2,
                     jit_model_args=True, progress_bar=True)  # fmt: skip
        draws, calls_after = [], []
        for index, y in enumerate(data):
            mcmc.run(jax.random.key(5 + index), y)
            draws.append(np.asarray(mcmc.get_samples(group_by_chain=True)["mu"]))
            calls_after.append(calls[0])
    return SimpleNamespace(data=data, draws=draws, calls=calls_after, stderr=stderr.getvalue())


def test_thinning_keeps_every_second_draw(data_runs):
    assert data_runs.draws[0].shape == (16, 30)


def test_jit_model_args_follows_new_data_without_retracing(data_runs):
    assert data_runs.calls[0] >= 1 and data_runs.calls[1] == data_runs.calls[0]
    z = two_sided_z(ALPHA, 2)
    for y, draws in zip(data_runs.data, data_runs.draws, strict=True):
        assert abs(_mcse_z(draws, _posterior_mean(np.asarray(y)))) < z


def test_progress_bar_shows_local_and_global_acceptance(data_runs):
    assert "local acc." in data_runs.stderr and "global acc." in data_runs.stderr


# -- Other global moves, potential_fn mode, bad potentials ---------------------------------


@pytest.mark.parametrize("global_move", ["imh", "none"])
def test_other_global_moves_run(global_move):
    init = {"x": jax.random.normal(jax.random.key(6), (8, 2))}
    flow = _wide_flow(2)
    kernel = FlowMCKernel(potential_fn=_potential, flow=flow, global_move=global_move, **FAST)
    mcmc = _mcmc(kernel, num_walkers=8, num_warmup=10, num_samples=10)
    mcmc.run(jax.random.key(7), init_params=init)
    assert mcmc.get_samples(group_by_chain=True)["x"].shape == (8, 10, 2)
    global_accept = mcmc.get_extra_fields()["global_accept_prob"]
    if global_move == "none":
        assert float(jnp.max(global_accept)) == 0.0
        # No global move, nothing to fit the flow for.
        assert leaves_equal(mcmc.last_state.adaptation.flow_params, split_flow(flow)[0])
    else:
        assert float(jnp.mean(global_accept)) > 0.0


def _half_nan_potential(z):
    """A standard Gaussian on x₀ > 0, NaN on x₀ < 0."""
    x = z["x"]
    return jnp.where(x[0] > 0, 0.5 * x @ x, jnp.nan)


def test_nan_potential_is_rejected_counted_and_harmless():
    num_walkers = 16
    start = jax.random.normal(jax.random.key(8), (num_walkers, 2))
    init = {"x": start.at[:, 0].set(jnp.abs(start[:, 0]) + 0.1)}
    kernel = FlowMCKernel(potential_fn=_half_nan_potential, flow=_wide_flow(2), **FAST)
    mcmc = _mcmc(kernel, num_walkers=num_walkers)
    mcmc.run(jax.random.key(9), init_params=init)
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"], np.float64)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    assert np.isfinite(x).all() and (x[..., 0] > 0).all()
    assert bool(jnp.all(jnp.isfinite(extra["potential_energy"])))
    # About half of the flow's proposals fall in the NaN half: counted, every iteration.
    assert float(extra["num_nonfinite"].mean()) > 0.5
    state = mcmc.last_state
    for leaf in jax.tree.leaves((state.z, state.step_size, state.adaptation)):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    # The chains sample the half-normal: E x₀ = sqrt(2/π), E x₁ = 0 (2 MCSE z-tests, ALPHA).
    z = two_sided_z(ALPHA, 2)
    assert abs(_mcse_z(x[..., 0], np.sqrt(2 / np.pi))) < z
    assert abs(_mcse_z(x[..., 1], 0.0)) < z


@pytest.mark.parametrize(
    ("global_move", "num_nan_walkers", "says"),
    [("isir", 3, "until a global move"), ("none", 3, "never move"), ("isir", 0, None)],
)
def test_walkers_starting_at_a_nonfinite_potential_are_named(global_move, num_nan_walkers, says):
    # Walkers started in the NaN half ran without a word: with global_move="none" they never
    # move. The check is made once, on the initial state.
    start = jnp.abs(jax.random.normal(jax.random.key(12), (8, 2))) + 0.1
    start = start.at[:num_nan_walkers, 0].set(-5.0)  # those start deep where U is NaN
    kernel = FlowMCKernel(potential_fn=_half_nan_potential, global_move=global_move, **FAST)
    mcmc = _mcmc(kernel, num_walkers=8, num_warmup=2, num_samples=2, progress_bar=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc.run(jax.random.key(13), init_params={"x": start})
    starts = [str(w.message) for w in caught if "walkers start" in str(w.message)]
    if says is None:
        assert starts == []
    else:
        assert len(starts) == 1 and f"{num_nan_walkers} of 8 walkers start" in starts[0]
        assert says in starts[0]
    # check_run named other causes for such kept draws ("not mixed", "stalled"), never them.
    health = check_run(mcmc)
    not_finite = [problem for problem in health.problems if "potential is not finite" in problem]
    if global_move == "none":
        assert health.nonfinite_fraction == num_nan_walkers / 8 and len(not_finite) == 1
    elif num_nan_walkers == 0:
        assert health.nonfinite_fraction == 0.0 and not not_finite


def test_float64_with_x64_enabled():
    with jax.enable_x64(True):
        init = {"x": jax.random.normal(jax.random.key(10), (8, 2), jnp.float64)}
        kernel = FlowMCKernel(potential_fn=_potential, flow=_wide_flow(2), **FAST)
        mcmc = _mcmc(kernel, num_walkers=8, num_warmup=20, num_samples=20)
        mcmc.run(jax.random.key(11), init_params=init)
        state = mcmc.last_state
        assert mcmc.get_samples()["x"].dtype == jnp.float64
        for name in ("potential_energy", "accept_prob", "global_accept_prob"):
            assert mcmc.get_extra_fields()[name].dtype == jnp.float64, name
        assert state.step_size.dtype == jnp.float64
        assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(state.adaptation.flow_params))
        assert bool(jnp.all(jnp.isfinite(mcmc.get_samples()["x"])))
    assert jnp.zeros(1).dtype == jnp.float32  # the context restored 32-bit mode


# -- Sharding ------------------------------------------------------------------------------


def _sharded_init(axis_type):
    mesh = jax.make_mesh((2,), ("walkers",), axis_types=(axis_type,))
    sharding = NamedSharding(mesh, PartitionSpec("walkers"))
    key_x, key_s = jax.random.split(jax.random.key(12))
    init = {
        "x": jax.random.uniform(key_x, (NUM_WALKERS, 2), minval=-2, maxval=2),
        "s": jax.random.uniform(key_s, (NUM_WALKERS,), minval=-2, maxval=2),  # unconstrained
    }
    return jax.device_put(init, sharding)


def _spread_over_two_devices(tree):
    for leaf in jax.tree.leaves(tree):
        assert len(leaf.sharding.device_set) == 2
        assert leaf.sharding.spec[0] == "walkers"


def test_sharded_walkers_stay_sharded_and_agree_with_an_unsharded_run(warm):
    kernel = FlowMCKernel(gauss_model, flow=_wide_flow(3), **FAST)
    mcmc = _mcmc(kernel)
    mcmc.warmup(jax.random.key(0), init_params=_sharded_init(AxisType.Auto))
    _spread_over_two_devices(mcmc.post_warmup_state.z)
    mcmc.run(jax.random.key(1))
    _spread_over_two_devices(mcmc.last_state.z)
    samples = mcmc.get_samples(group_by_chain=True)
    # Same model and settings as the unsharded `warm` run: the means agree (3 two-sample
    # z-tests with ArviZ MCSEs, ALPHA).
    z = two_sided_z(ALPHA, 3)
    for a, b in [
        (samples["x"][..., 0], warm.samples["x"][..., 0]),
        (samples["x"][..., 1], warm.samples["x"][..., 1]),
        (samples["s"], warm.samples["s"]),
    ]:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        se = np.hypot(arviz_stats.mcse(a), arviz_stats.mcse(b))
        assert abs(a.mean() - b.mean()) / se < z


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_walkers_on_an_explicit_mesh(axis_type):
    # Regression: jax's default `jax.make_mesh` has Explicit axes, on which init failed with a
    # ShardingTypeError (numpyro's batch_ravel_pytree does `leaf[0]`).
    kernel = FlowMCKernel(gauss_model, flow=_wide_flow(3), **FAST)
    mcmc = _mcmc(kernel, num_warmup=2, num_samples=2)
    mcmc.run(jax.random.key(0), init_params=_sharded_init(axis_type))
    _spread_over_two_devices(mcmc.last_state.z)
    assert mcmc.get_samples(group_by_chain=True)["x"].shape == (NUM_WALKERS, 2, 2)
    assert bool(jnp.all(jnp.isfinite(mcmc.get_samples()["x"])))


def test_set_mesh_of_explicit_axes_is_a_clear_error_and_of_automatic_ones_works():
    # Inside `with jax.set_mesh(explicit)` every operation on the walkers (kept on automatic
    # axes) failed deep in JAX: "context mesh ... should match the mesh of sharding".
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((2,), ("walkers",), axis_types=(axis_type,))
        mcmc = _mcmc(FlowMCKernel(gauss_model, flow=_wide_flow(3), **FAST), 4, 2, 2)
        with jax.set_mesh(mesh):
            if axis_type == AxisType.Explicit:
                with pytest.raises(ValueError, match=r"outside a `with jax.set_mesh\(...\)`"):
                    mcmc.run(jax.random.key(0))
            else:
                mcmc.run(jax.random.key(0))
                assert bool(jnp.all(jnp.isfinite(mcmc.get_samples()["x"])))


# -- Pickling ------------------------------------------------------------------------------


def test_kernel_with_init_strategy_pickles_before_init():
    kernel = FlowMCKernel(gauss_model, init_strategy=init_to_median)
    loaded = pickle.loads(pickle.dumps(kernel))
    assert loaded.model is gauss_model


def test_mcmc_pickles_after_a_run_and_continues():
    # The default flow on a model (the run shared with test_mcse): load the pickled
    # MCMC and continue from its last state; the frozen flow carries over. (Every other
    # configuration, `potential_fn` kernels and user flows included: tests/test_pickle.py.)
    mcmc = mixture_flowmc_run().mcmc
    last_state = mcmc.last_state
    loaded = pickle.loads(pickle.dumps(mcmc))
    assert leaves_equal(loaded.last_state, last_state)
    loaded.num_samples = 10
    loaded.post_warmup_state = loaded.last_state
    loaded.run(loaded.last_state.rng_key)
    draws = loaded.get_samples(group_by_chain=True)["x"]
    assert draws.shape == (mcmc.num_chains, 10, 2)
    assert int(loaded.last_state.i[0]) == int(last_state.i[0]) + 10
    assert leaves_equal(loaded.last_state.adaptation.flow_params, last_state.adaptation.flow_params)
    assert isinstance(loaded.sampler.get_flow(loaded.last_state), AbstractDistribution)


def test_get_flow_names_the_state_it_needs():
    kernel = FlowMCKernel(potential_fn=lambda z: 0.5 * jnp.sum(z["x"] ** 2), num_particles=4)
    state = kernel.init(
        jax.random.split(jax.random.key(0), 4), 0, init_params={"x": jnp.zeros((4, 2))}
    )
    assert kernel.get_flow(state).shape == (2,)
    # `mcmc.post_warmup_state` is None unless `mcmc.warmup` ran: say what to pass instead.
    with pytest.raises(TypeError, match=r"mcmc\.last_state"):
        kernel.get_flow(None)


def numpy_data_model(t, y):
    # NumPy applied to the data, as ports of Stan models do: the data must stay concrete.
    design = np.stack([np.ones_like(t), np.asarray(t)], axis=1)
    weights = numpyro.sample("w", dist.Normal(0.0, 10.0).expand([2]))
    numpyro.sample("y", dist.Normal(jnp.asarray(design) @ weights, 1.0), obs=y)


def test_model_applying_numpy_to_its_data_runs():
    t = np.linspace(-1.0, 1.0, 8)
    mcmc = _mcmc(FlowMCKernel(numpy_data_model, **FAST), num_warmup=20, num_samples=20)
    mcmc.run(jax.random.PRNGKey(12), t, 2.0 * t)
    assert mcmc.get_samples()["w"].shape == (NUM_WALKERS * 20, 2)
