"""Warm-up adaptation: the ensemble preconditioner, dual averaging, windows and fit stopping.

Maths oracles for the pure pieces, then the issue's goals through ``MCMC``: a posterior far from
the initial box and badly scaled, an unstandardised regression, the README's two-mode target
shifted away from the origin. Each of those has a negative control: the same run with the
adaptation switched off (identity preconditioner) or the old initialisation fails the same
check. Statistical checks state their false-alarm rate.
"""

import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _targets import round_config, two_sided_z, vectorized_mcmc, without_settling
from flowjax.bijections import Affine
from flowjax.distributions import Normal
from numpyro.infer.initialization import init_to_uniform

from numpyro_ebm import FlowMCKernel, flows, health
from numpyro_ebm.flows import default_flow
from numpyro_ebm.health import check_run
from numpyro_ebm.kernel_state import COLLECTABLE_FIELDS
from numpyro_ebm.samplers import warmup
from numpyro_ebm.samplers.adaptation import (
    Preconditioner,
    ensemble_preconditioner,
    from_latent,
    identity_preconditioner,
    init_step_size_adaptation,
    moved_far,
    precondition_flow,
    to_latent,
    update_step_size,
)
from numpyro_ebm.samplers.fit_progress import init_fit_progress, still_fitting, update_fit_progress

ALPHA = 1e-3  # family-wise false-alarm rate of each statistical test


# -- Pure pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [False, True])
def test_ensemble_preconditioner_recovers_the_walkers_moments(dense):
    cov = np.array([[4.0, -1.9], [-1.9, 1.0]])
    x = jax.random.multivariate_normal(jax.random.key(0), jnp.array([1e3, -5.0]), cov, (20000,))
    x = x.at[:3].set(jnp.nan)  # non-finite walkers are ignored
    loc, scale = ensemble_preconditioner(x, dense=dense)
    np.testing.assert_allclose(loc, [1e3, -5.0], atol=0.05)
    estimate = np.diag(np.asarray(scale) ** 2) if not dense else np.asarray(scale @ scale.T)
    expected = np.diag(np.diag(cov)) if not dense else cov
    np.testing.assert_allclose(estimate, expected, atol=0.1)


def test_dense_preconditioner_is_positive_definite_with_fewer_walkers_than_dimensions():
    x = jax.random.normal(jax.random.key(1), (4, 10))
    _, chol = ensemble_preconditioner(x, dense=True)
    assert bool(jnp.all(jnp.isfinite(chol))) and bool(jnp.all(jnp.diag(chol) > 0))


def test_collapsed_walkers_get_unit_scale():
    loc, scale = ensemble_preconditioner(jnp.full((8, 2), 3.0))
    np.testing.assert_array_equal(loc, [3.0, 3.0])
    np.testing.assert_array_equal(scale, [1.0, 1.0])
    # Collapsed up to rounding far from the origin too (1e6 + a few float32 ulps).
    far = 1e6 + jnp.array([0.0, 0.0625, -0.0625, 0.0])[:, None] * jnp.ones(2)
    np.testing.assert_array_equal(ensemble_preconditioner(far).scale, [1.0, 1.0])


@pytest.mark.parametrize(("loc", "sd"), [(5e-7, 1e-9), (0.0, 1e-8), (-3.0, 1e-5)])
def test_a_tight_but_resolved_spread_keeps_its_scale(loc, sd):
    # A wavelength of 500 nm known to 1 nm: an absolute floor of 1e-6 gave it scale 1, the
    # step size then shrank to 1e-18 for every coordinate and the sampler froze.
    x = loc + sd * jax.random.normal(jax.random.key(2), (4096, 2))
    scale = ensemble_preconditioner(x).scale
    np.testing.assert_allclose(scale, sd, rtol=0.05)  # 4096 draws: sd's error about 1.1 %


@pytest.mark.parametrize("dense", [False, True])
def test_a_spread_whose_square_overflows_float32_keeps_its_scale(dense):
    # Distances in metres: a spread of 1e19 squares past float32's 3.4e38. The variance was
    # inf, every walker's flow density 0, and no walker ever moved.
    cov = np.array([[1.0, -0.5], [-0.5, 4.0]])
    x = jax.random.multivariate_normal(jax.random.key(4), jnp.zeros(2), cov, (4096,))
    x = 1e20 + 1e19 * x
    scale = ensemble_preconditioner(x, dense=dense).scale
    assert bool(jnp.all(jnp.isfinite(scale)))
    estimate = np.diag(np.asarray(scale, np.float64) ** 2)
    if dense:
        estimate = np.asarray(scale, np.float64) @ np.asarray(scale, np.float64).T
    expected = 1e38 * (cov if dense else np.diag(np.diag(cov)))
    np.testing.assert_allclose(estimate / 1e38, expected / 1e38, atol=0.25)  # 4096 draws


def test_a_posterior_in_metres_is_sampled_in_float32():
    # The same spread end to end: a distance of 1e20 m measured to 1e18 m.
    def model():
        distance = numpyro.sample("d", dist.Normal(1e20, 1e19))
        numpyro.sample("d_obs", dist.Normal(distance, 1e18), obs=1.05e20)

    precision = 1e-38 + 1e-36
    mean, sd = (1e20 * 1e-38 + 1.05e20 * 1e-36) / precision, precision**-0.5
    mcmc = vectorized_mcmc(FlowMCKernel(model), 200, 200, 64)
    mcmc.run(jax.random.PRNGKey(0))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["d"], np.float64)
    assert np.mean(draws[:, 1:] != draws[:, :-1]) > 0.5  # was 0: nothing moved
    assert abs(draws.mean() - mean) < 0.1 * sd  # 5 MCSEs for any ESS above 2500
    assert 0.9 < draws.std() / sd < 1.1


def _dense_example():
    return Preconditioner(jnp.array([2.0, -1.0]), jnp.array([[2.0, 0.0], [-0.7, 0.3]]))


@pytest.mark.parametrize("dense", [False, True])
def test_latent_map_round_trips_and_the_flow_density_follows_the_change_of_variables(dense):
    pre = (
        _dense_example() if dense else Preconditioner(jnp.array([2.0, -1.0]), jnp.array([2.0, 0.3]))
    )
    x = jax.random.normal(jax.random.key(2), (5, 2))
    np.testing.assert_allclose(from_latent(pre, to_latent(pre, x)), x, atol=1e-5)
    base = default_flow(jax.random.key(3), 2)
    flow = precondition_flow(base, pre)
    # log q_x(x) = log q_u(u(x)) + log |det du/dx|, the Jacobian from autodiff.
    for point in x:
        jacobian = jax.jacobian(lambda p: to_latent(pre, p))(point)
        expected = base.log_prob(to_latent(pre, point)) + jnp.linalg.slogdet(jacobian)[1]
        np.testing.assert_allclose(flow.log_prob(point), expected, rtol=1e-4, atol=1e-4)


def test_windows_restart_on_a_shift_or_a_scale_change_only():
    ref = identity_preconditioner(3)
    assert not bool(moved_far(Preconditioner(jnp.full(3, 0.5), jnp.full(3, 1.5)), ref))
    assert bool(moved_far(Preconditioner(jnp.full(3, 1.5), jnp.ones(3)), ref))
    assert bool(moved_far(Preconditioner(jnp.zeros(3), jnp.array([1.0, 1.0, 2.5])), ref))
    assert bool(moved_far(Preconditioner(jnp.zeros(3), jnp.array([1.0, 0.3, 1.0])), ref))


def test_dual_averaging_finds_the_target_acceptance_of_mala_on_a_gaussian():
    # MALA on N(0, 1) in d = 10: the acceptance falls with the step size, so dual averaging
    # has one fixed point; from a step 1e4 too small it must get there within 300 rounds.
    from numpyro_ebm.samplers.langevin import init_walkers, mala_step

    def potential(x):
        return 0.5 * x @ x

    walkers = init_walkers(jax.random.normal(jax.random.key(4), (256, 10)), potential)
    adaptation = init_step_size_adaptation(jnp.array(1e-5))
    step = jnp.array(1e-5)

    @jax.jit
    def one_round(carry, key):
        walkers, step, adaptation = carry
        walkers, info = mala_step(key, walkers, potential, step)
        step, average, adaptation = update_step_size(adaptation, jnp.mean(info.accept_prob), 0.574)
        return (walkers, step, adaptation), (jnp.mean(info.accept_prob), average)

    _, (accept, average) = jax.lax.scan(
        one_round, (walkers, step, adaptation), jax.random.split(jax.random.key(5), 300)
    )
    assert 0.45 < float(jnp.mean(accept[-100:])) < 0.7
    assert float(average[-1]) > 1e-2  # moved by more than three orders of magnitude


def test_fitting_stops_after_a_plateau_and_never_without_patience():
    progress = init_fit_progress()
    for value in jnp.linspace(0.0, 0.9, 30):  # rising acceptance: still fitting
        progress = update_fit_progress(progress, value)
    assert bool(still_fitting(progress, 50))
    # Flat acceptance: the smoothed value creeps up to 0.9 for ~45 rounds (gains of 0.01 at
    # rate 0.1), then 50 rounds without gain stop the fitting.
    for _ in range(150):
        progress = update_fit_progress(progress, jnp.array(0.9))
    assert not bool(still_fitting(progress, 50))
    assert bool(still_fitting(progress, None))


def _preconditioner_after(fit_progress, shift):
    """The preconditioner after an adapting round whose walkers moved by ``shift`` sds."""
    walkers = jax.random.normal(jax.random.key(0), (256, 2))
    state = warmup.init_adaptation(walkers, {}, {}, step_size=0.1, buffer_size=4)
    state = state._replace(round_index=jnp.int32(3))  # rows 0-2 hold 3 rounds at the start
    config = round_config(fit_patience=50)
    accept = jnp.full(256, 0.5)
    flat = jnp.zeros(2, bool)
    buffer = warmup.record_round(state.buffer, state.round_index, walkers + shift, True)
    state = warmup.adapt(
        state._replace(fit_progress=fit_progress, buffer=buffer), accept, accept, flat, config
    )
    return state.preconditioner


def _plateaued_progress():
    progress = init_fit_progress()
    for _ in range(200):
        progress = update_fit_progress(progress, jnp.array(0.9))
    assert not bool(still_fitting(progress, 50))
    return progress


def test_the_preconditioner_freezes_with_the_flow_until_a_new_window():
    # The default flow lives in the preconditioned coordinates: moving them after the flow has
    # stopped learning would move the proposal off the walkers (in d = 16 the global acceptance
    # then fell from 0.69 to 0.25 within 30 rounds, and a mode weight came out 0.77).
    start = _preconditioner_after(init_fit_progress(), 0.0)
    small, far = 0.3, 30.0  # within the walkers' spread, and beyond it (a new window)
    frozen = _preconditioner_after(_plateaued_progress(), small)
    np.testing.assert_allclose(frozen.loc, start.loc, atol=1e-6)
    # Controls: still fitting, the estimate follows the walkers; moved far, a new window does.
    for progress, shift in ((init_fit_progress(), small), (_plateaued_progress(), far)):
        moved = _preconditioner_after(progress, shift)
        # Estimated from the 4 buffered rounds: 3 at the start, 1 of the moved walkers.
        np.testing.assert_allclose(moved.loc, start.loc + shift / 4, atol=1e-5)


# -- Through MCMC: far, badly scaled, correlated ---------------------------------------------

# A diagonal Gaussian target whose coordinates sit far from the initial box (−2, 2) and span
# six orders of magnitude of scale. One coordinate per difficulty: float32 cannot hold 1e3 to
# 1e-3 relative precision in the same coordinate.
FAR_MEAN = np.array([1e3, 0.0, -20.0])
FAR_SCALE = np.array([1.0, 1e-3, 1e3])


def _quiet_run(kernel, *args, num_warmup, num_samples, num_walkers, seed, init_params=None):
    """An MCMC run with warnings silenced (control runs warn, by design)."""
    mcmc = vectorized_mcmc(kernel, num_warmup, num_samples, num_walkers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.run(jax.random.PRNGKey(seed), *args, init_params=init_params)
    return mcmc


def far_potential(z):
    return 0.5 * jnp.sum(((z["x"] - FAR_MEAN) / FAR_SCALE) ** 2)


def _far_run(num_walkers=64, num_warmup=400, num_samples=200):
    start = {"x": jax.random.uniform(jax.random.key(6), (num_walkers, 3), minval=-2, maxval=2)}
    kernel = FlowMCKernel(potential_fn=far_potential, num_particles=16)
    mcmc = _quiet_run(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_walkers=num_walkers,
        seed=7,
        init_params=start,
    )
    return np.asarray(mcmc.get_samples(group_by_chain=True)["x"], np.float64)


def _standardised_errors(draws):
    """|mean − truth| and |sd − truth| in units of the true sd, per coordinate."""
    flat = draws.reshape(-1, draws.shape[-1])
    return np.abs(flat.mean(0) - FAR_MEAN) / FAR_SCALE, np.abs(flat.std(0) / FAR_SCALE - 1)


def test_a_far_and_badly_scaled_posterior_is_found_and_sampled():
    mean_error, sd_error = _standardised_errors(_far_run())
    # 64 × 200 draws of a well-mixed chain: the mean's error is ~1e-2 sd; 0.1 sd is the
    # issue's goal and ~10 standard errors, so a false alarm is out of reach.
    assert mean_error.max() < 0.1, mean_error
    assert sd_error.max() < 0.1, sd_error


def test_the_same_run_without_the_preconditioner_fails(monkeypatch):
    monkeypatch.setattr(
        warmup,
        "ensemble_preconditioner",
        lambda x, dense=False, where=None: identity_preconditioner(
            x.shape[-1], x.dtype, dense=dense
        ),
    )
    mean_error, sd_error = _standardised_errors(_far_run())
    assert max(mean_error.max(), sd_error.max()) > 0.1, (mean_error, sd_error)


# Linear regression y = a + b t + noise with an unstandardised predictor t ~ N(100, 10²): the
# posterior of (a, b) has sds 100× apart and correlation ≈ −0.995 (issue 7, item 8). Flat
# priors and a known noise sd make it Gaussian with the least-squares moments.
NUM_POINTS = 50
NOISE_SD = 2.0


def _regression_data():
    key_t, key_y = jax.random.split(jax.random.key(8))
    t = 100.0 + 10.0 * jax.random.normal(key_t, (NUM_POINTS,))
    y = 3.0 + 0.5 * t + NOISE_SD * jax.random.normal(key_y, (NUM_POINTS,))
    design = np.stack([np.ones(NUM_POINTS), np.asarray(t, np.float64)], 1)
    cov = NOISE_SD**2 * np.linalg.inv(design.T @ design)
    mean = cov @ design.T @ np.asarray(y, np.float64) / NOISE_SD**2
    return t, y, mean, cov


def regression(t, y):
    a = numpyro.sample("a", dist.ImproperUniform(dist.constraints.real, (), ()))
    b = numpyro.sample("b", dist.ImproperUniform(dist.constraints.real, (), ()))
    numpyro.sample("y", dist.Normal(a + b * t, NOISE_SD), obs=y)


def _regression_errors(**kernel_options):
    t, y, mean, cov = _regression_data()
    kernel = FlowMCKernel(regression, num_particles=16, **kernel_options)
    mcmc = _quiet_run(kernel, t, y, num_warmup=400, num_samples=200, num_walkers=64, seed=9)
    samples = mcmc.get_samples()
    draws = np.stack([np.asarray(samples["a"]), np.asarray(samples["b"])], 1).astype(float)
    sd = np.sqrt(np.diag(cov))
    return np.abs(draws.mean(0) - mean) / sd, np.abs(draws.std(0) / sd - 1)


@pytest.mark.parametrize("dense", [False, True])
def test_unstandardised_regression_matches_the_exact_posterior(dense):
    mean_error, sd_error = _regression_errors(dense_preconditioner=dense)
    assert mean_error.max() < 0.1, mean_error  # the goal: within 0.1 posterior sd
    assert sd_error.max() < 0.1, sd_error


# -- Walkers that narrow a thousandfold during warm-up -----------------------------------------


def _narrowing_posterior(y):
    # Prior sd 100, posterior sd 0.1 at y: the walkers start 1000× wider than the posterior.
    mu = numpyro.sample("mu", dist.Normal(0.0, 100.0).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(mu, 0.1).to_event(1), obs=y)


def _narrowing_global_accept_prob(seed):
    kernel = FlowMCKernel(_narrowing_posterior, num_particles=8)
    mcmc = _quiet_run(
        kernel,
        jnp.array([50.0, -30.0]),
        num_warmup=200,
        num_samples=50,
        num_walkers=16,
        seed=seed,
    )
    return float(np.mean(mcmc.get_extra_fields()["global_accept_prob"]))


@pytest.mark.parametrize("transformer", ["bounded", "flowjax's softplus scale"])
def test_the_flow_keeps_fitting_while_the_walkers_narrow(monkeypatch, transformer):
    # With flowjax's softplus scale the fitted flow turned explosive as the walkers narrowed,
    # some buffered points got log-density -inf, every later fit step was skipped and the
    # global acceptance ended near 0.07 (negative control). Since the preconditioner pools
    # only rounds that were run, and the walkers settle before the first global move, the
    # softplus scale fails in some seeds only: 0.24, 0.19, 0.06, 0.04, 0.04 with seeds 0, 2, 3,
    # 4, 6, and 0.87 with 1, 5, 7. With the bounded scale it is about 0.87 for every seed tried
    # (0–4). 0.5 is far from both. The control must fail in one of six seeds, which a flow
    # failing in 5 of 8 misses with probability (3/8)^6 = 0.3 %.
    if transformer == "bounded":
        assert all(_narrowing_global_accept_prob(seed) > 0.5 for seed in (0, 1))
    else:
        monkeypatch.setattr(flows, "bounded_affine", Affine)
        assert any(_narrowing_global_accept_prob(seed) < 0.5 for seed in range(6))


# -- The README's two-mode target away from the origin ----------------------------------------


def _shifted_two_modes(shift):
    shift = jnp.asarray(shift)

    def model():
        mixture = dist.MixtureSameFamily(
            dist.Categorical(jnp.array([1 / 3, 2 / 3])),
            dist.MultivariateNormal(jnp.array([[-5.0, -5.0], [5.0, 5.0]]) + shift, jnp.eye(2)),
        )
        numpyro.sample("x", mixture)

    return model


def _top_right_weight(shift, **kernel_options):
    kernel = FlowMCKernel(_shifted_two_modes(shift), num_particles=16, **kernel_options)
    mcmc = _quiet_run(kernel, num_warmup=300, num_samples=200, num_walkers=64, seed=10)
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"]) - np.asarray(shift)
    return (x[..., 0] + x[..., 1] > 0).astype(float)


@pytest.mark.parametrize("shift", [(20.0, 0.0), (0.0, -1e3)])
def test_two_modes_far_from_the_origin_get_their_weights(shift):
    indicator = _top_right_weight(shift)
    # Binomial z-test on 64 × 200 draws, inflated ×2 for autocorrelation (i-SIR moves most
    # walkers each iteration); 2 shifts share ALPHA.
    se = 2 * np.sqrt((2 / 3) * (1 / 3) / indicator.size)
    assert abs(indicator.mean() - 2 / 3) < two_sided_z(ALPHA, 2) * se


def test_without_global_moves_the_far_modes_weights_are_lost():
    # Control: MALA alone from NumPyro's initial box (−2, 2). The weight-1/3 mode at (15, −5)
    # is nearer than the 2/3 one at (25, 5) by a log-density gap of ~200, so every walker
    # descends into it and none crosses the 14 units to the other. (Before the affine scale
    # was bounded, the flow-assisted run from the box 10³ away also missed a mode; since, it
    # finds both, weight 0.656 with this seed, so that is no longer a control.)
    indicator = _top_right_weight((20.0, 0.0), init_strategy=init_to_uniform, global_move="none")
    assert abs(indicator.mean() - 2 / 3) > 0.2


# -- Collectable fields and health checks -----------------------------------------------------


def _standard_normal():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]))


@pytest.mark.parametrize("make_key", [jax.random.PRNGKey, jax.random.key])
def test_every_collectable_field_is_collected_with_the_walker_axis(make_key):
    mcmc = vectorized_mcmc(FlowMCKernel(_standard_normal, num_particles=4), 20, 10, 8)
    mcmc.warmup(make_key(0), extra_fields=COLLECTABLE_FIELDS)
    mcmc.run(make_key(1), extra_fields=COLLECTABLE_FIELDS)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    assert set(COLLECTABLE_FIELDS) - {"z"} <= set(extra)
    for name, value in extra.items():
        assert value.shape[:2] == (8, 10), name
    np.testing.assert_array_equal(extra["i"][0], np.arange(21, 31))
    assert len(set(np.asarray(extra["step_size"]).ravel())) == 1  # frozen after warm-up


@pytest.mark.parametrize(
    "name", ["diverging", "adapt_state.step_size", "num_steps", "adaptation", "adaptation.buffer"]
)
def test_a_field_that_cannot_be_collected_is_named_before_any_iteration(name):
    # NumPyro looks an unknown field up by item after attribute: on a tuple that was
    # "TypeError: tuple indices must be integers or slices, not str", naming nothing. The
    # sampler's own state was collected (its whole buffer, each iteration) until the swap of
    # the walker and iteration axes failed after the run, losing the draws.
    mcmc = vectorized_mcmc(FlowMCKernel(_standard_normal, num_particles=4), 20, 10, 8)
    first = name.split(".")[0]  # NumPyro looks dotted names up one part at a time
    with pytest.raises(ValueError, match=rf"FlowMCKernel's state \(i, z, .*\), got '{first}'"):
        mcmc.run(jax.random.key(0), extra_fields=("step_size", name))
    assert mcmc.last_state is None  # nothing ran


def _run(model, num_walkers=32, **options):
    mcmc = vectorized_mcmc(FlowMCKernel(model, **options), 200, 200, num_walkers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc.run(jax.random.PRNGKey(11))
    return mcmc, [str(w.message) for w in caught if "FlowMCKernel" in str(w.message)]


def test_a_healthy_run_raises_no_warning():
    mcmc, messages = _run(_standard_normal, num_particles=8)
    assert messages == []
    assert check_run(mcmc).problems == ()


def test_checking_a_run_that_kept_no_draws_is_a_clear_error():
    # Regression: after `warmup` alone it reported "mean global acceptance 0.000" (the mean of
    # the zeros NumPyro returns as draws then) for a run whose warm-up acceptance was ~0.85.
    mcmc = vectorized_mcmc(FlowMCKernel(_standard_normal, num_particles=4), 5, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.warmup(jax.random.PRNGKey(0))
    with pytest.raises(
        ValueError, match="expected an MCMC that has kept some; got one that has only"
    ):
        check_run(mcmc)


def test_walkers_stuck_in_their_modes_are_reported():
    # MALA only: each walker stays in the mode of its prior draw. With 8 groups of 16
    # walkers the groups' mode fractions differ (R̂² − 1 ≈ 1/16 expected, chi-square with 7
    # degrees of freedom: below the 1.01 threshold with probability ~0.05).
    two_modes = _shifted_two_modes((0.0, 0.0))

    def model():
        two_modes()
        # Regression: a constant deterministic site made check_run's R̂ NaN, and the check was
        # skipped without a word. Deterministic sites are left out of R̂ now.
        numpyro.deterministic("offset", jnp.zeros(3))

    mcmc, messages = _run(model, num_walkers=128, global_move="none")
    assert len(messages) == 1 and "have not mixed" in messages[0]
    health = check_run(mcmc)
    assert np.isfinite(health.max_rhat)
    assert any("have not mixed" in problem for problem in health.problems)


def _few_walker_messages(seed, **run_options):
    mcmc = vectorized_mcmc(FlowMCKernel(_standard_normal), 300, 300, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc.run(jax.random.PRNGKey(seed), **run_options)
    return [str(w.message) for w in caught if "have not mixed" in str(w.message)]


@pytest.mark.parametrize("seed", [17, 29])
def test_eight_healthy_walkers_raise_no_rhat_warning(seed):
    # Regression: with 8 walkers (2 groups of 4) and the threshold 1.01 of groups of 16, a
    # healthy 2-D Gaussian's end-of-warm-up check fired in 2 runs of 10 (seeds 4 and 7), and
    # since the preconditioner's moments are taken in units of the walkers' spread, whose
    # rounding changed every trajectory, in 2 runs of 30 (these two seeds, seeds 0-29).
    assert _few_walker_messages(seed) == []


@pytest.mark.parametrize("seed", [17, 29])
def test_control_with_the_threshold_of_16_walker_groups_they_do(monkeypatch, seed):
    monkeypatch.setattr(health, "rhat_threshold", lambda num_walkers: 1.01)
    assert len(_few_walker_messages(seed)) == 1


def test_eight_walkers_stuck_in_two_modes_are_still_reported():
    # MALA only, the first group of 4 walkers in one mode and the second in the other: R̂ ≫ 1.04.
    start = jnp.concatenate([jnp.full((4, 2), -5.0), jnp.full((4, 2), 5.0)])
    mcmc = vectorized_mcmc(
        FlowMCKernel(_shifted_two_modes((0.0, 0.0)), global_move="none"), 300, 300, 8
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc.run(jax.random.PRNGKey(0), init_params={"x": start})
    assert any("have not mixed" in str(w.message) for w in caught)
    assert any("have not mixed" in problem for problem in check_run(mcmc).problems)


@pytest.mark.parametrize("global_move", ["none", "isir"])
def test_walker_rhat_says_whether_each_walker_crosses_between_modes(global_move):
    # 32 walkers started alternately in the two modes. MALA alone never crosses: each walker's
    # R̂ is huge while the groups of 16 each hold half of each mode and agree. With i-SIR
    # every walker visits both (measured 1.001 at d = 2, 128 walkers).
    start = jnp.tile(jnp.array([[-5.0, -5.0], [5.0, 5.0]]), (16, 1))
    kernel = FlowMCKernel(_shifted_two_modes((0.0, 0.0)), global_move=global_move)
    mcmc = vectorized_mcmc(kernel, 300, 300, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.run(jax.random.PRNGKey(0), init_params={"x": start})
    health = check_run(mcmc)
    if global_move == "none":
        assert health.walker_rhat > 1.5 and health.max_rhat < 1.1
    else:
        assert health.walker_rhat < 1.02


def test_a_useless_flow_is_reported():
    # A frozen flow far from the target: no global proposal is ever accepted.
    flow = Normal(jnp.full(2, 50.0), jnp.ones(2))
    mcmc, messages = _run(_standard_normal, flow=flow, fit_flow=False, num_particles=4)
    assert len(messages) == 1 and "global acceptance" in messages[0]
    assert any("global acceptance" in problem for problem in check_run(mcmc).problems)


def _warning_files(num_warmup, **options):
    mcmc = vectorized_mcmc(FlowMCKernel(_standard_normal, **options), num_warmup, 20, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc.run(jax.random.PRNGKey(11))  # the line a warning about this run should name
    return [w.filename for w in caught if "FlowMCKernel" in str(w.message)]


def test_a_warning_about_a_run_names_the_users_call():
    # Without warm-up, `init` warns from inside NumPyro's `MCMC.run`.
    assert _warning_files(0, num_particles=4) == [__file__]


def test_the_warm_up_check_names_the_health_module_not_jax():
    # Regression: the end-of-warm-up warning was attributed to jax/_src/debugging.py, so a
    # filter by module could not select it. Where XLA runs the check on its own thread, no
    # user frame is on the stack and the package's frame that warned is named; where it runs
    # it on the caller's thread (seen under pytest-xdist), the user's call is.
    flow = Normal(jnp.full(2, 50.0), jnp.ones(2))
    files = _warning_files(50, flow=flow, fit_flow=False, num_particles=4)
    assert len(files) == 1 and Path(files[0]) in (Path(health.__file__), Path(__file__))


def test_a_collapsed_step_size_is_reported():
    # A rough potential: ripples of period 1e-4 make every MALA step but tiny ones fail.
    def rough():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]))
        numpyro.factor("ripples", 5.0 * jnp.sum(jnp.sin(6e4 * x)))

    mcmc, messages = _run(rough, num_particles=4)
    assert len(messages) == 1 and "step size" in messages[0]
    assert any("step size" in problem for problem in check_run(mcmc).problems)


@pytest.mark.parametrize("patience", [None, 10])
def test_fitting_stops_at_a_plateau_only_with_patience(patience):
    # A standard normal: the flow is good within a few rounds, the acceptance plateaus.
    kernel = FlowMCKernel(_standard_normal, num_particles=8, fit_patience=patience)
    mcmc = vectorized_mcmc(kernel, 150, 1, 16)
    mcmc.warmup(jax.random.PRNGKey(13), collect_warmup=True, extra_fields=("flow_loss",))
    flow_loss = mcmc.get_extra_fields(group_by_chain=True)["flow_loss"]
    fitted = np.isfinite(np.asarray(flow_loss)[0])  # NaN where the round did not fit
    assert fitted[:10].all()  # fitting at the start either way
    assert fitted[-20:].all() == (patience is None)
    assert (~fitted[-20:]).all() == (patience is not None)


@pytest.mark.parametrize("adapt_num_particles", [True, False])
def test_a_good_flow_draws_fewer_particles_only_when_adaptive(adapt_num_particles):
    # A standard normal: the flow matches it within a few rounds (global acceptance near
    # 1 − 1/N), so one chunk of particles moves almost every walker at a fraction of the cost.
    kernel = FlowMCKernel(
        _standard_normal,
        num_particles=17,  # 16 fresh particles in 8 chunks of 2
        fit_patience=10,
        adapt_num_particles=adapt_num_particles,
    )
    mcmc = vectorized_mcmc(kernel, 150, 20, 16)
    mcmc.run(jax.random.PRNGKey(14), extra_fields=("global_accept_prob",))
    adaptation = mcmc.last_state.adaptation
    # Not adaptive, the particles come in one chunk (the memory budget allows it).
    num_chunks = 8 if adapt_num_particles else 1
    assert adaptation.particle_accept.shape == (num_chunks,)
    assert (int(adaptation.particle_chunks) < num_chunks) == adapt_num_particles
    # The measured acceptance grows with the number of particles (the flow is not perfect).
    assert np.all(np.diff(np.asarray(adaptation.particle_accept)) >= 0)
    global_accept = float(np.mean(mcmc.get_extra_fields()["global_accept_prob"]))
    assert global_accept > 0.5


# Notebook 01's posterior: the sign of an amplitude seen through its square (20 points) and a
# noisy direct probe (2 points). Mode theta > 0 holds 0.820 of the mass (quadrature in the
# notebook), the other mode 0.18, and each mode's sd is about 0.03.
AMPLITUDE_SQUARES = np.array([
    1.48, 1.40, 1.63, 1.47, 1.28, 1.55, 1.83, 1.72, 1.23, 1.06,
    1.25, 1.45, 0.74, 1.37, 1.07, 1.22, 1.28, 1.35, 1.56, 1.75,
])  # fmt: skip
AMPLITUDE_PROBES = np.array([0.42, 2.16])
POSITIVE_WEIGHT = 0.820


def _amplitude():
    theta = numpyro.sample("theta", dist.Normal(0.0, 3.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(theta**2, sigma), obs=AMPLITUDE_SQUARES)
    numpyro.sample("z", dist.Normal(theta, 2.0), obs=AMPLITUDE_PROBES)


def _positive_share_with_32_walkers():
    kernel = FlowMCKernel(_amplitude)
    mcmc = vectorized_mcmc(kernel, 300, 200, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A seed at which the control loses the small mode. At seed 1 it no longer does: the
        # stranded walkers of the small mode keep the flow fitting until it covers them.
        mcmc.run(jax.random.PRNGKey(2))
    return float(np.mean(np.asarray(mcmc.get_samples()["theta"]) > 0))


def test_few_walkers_keep_a_small_mode():
    # 6400 draws with an indicator ESS in the thousands: an error of 0.06 is over 5 MCSEs,
    # a false alarm well under ALPHA.
    share = _positive_share_with_32_walkers()
    assert abs(share - POSITIVE_WEIGHT) < 0.06, share


def test_with_the_preconditioner_from_this_round_alone_the_small_mode_is_lost(monkeypatch):
    def this_round(state):  # recorded in the buffer's row of the round
        return state.buffer, (
            jnp.arange(len(state.buffer)) == state.round_index % len(state.buffer)
        )[:, None]

    monkeypatch.setattr(warmup, "preconditioner_points", this_round)
    share = _positive_share_with_32_walkers()
    assert abs(share - POSITIVE_WEIGHT) > 0.1, share


# -- The buffer's first rounds ---------------------------------------------------------------


def _ten_observations(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("n", 10):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _sampling_health(num_warmup, settle=True):
    """Global acceptance and stranded share of the kept rounds, warm-up as long as the buffer."""
    kernel = FlowMCKernel(_ten_observations, buffer_size=num_warmup)
    if not settle:
        without_settling(kernel)
    mcmc = vectorized_mcmc(kernel, num_warmup, 100, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.run(jax.random.PRNGKey(1), jnp.arange(10.0))
    extra = mcmc.get_extra_fields()
    return float(extra["global_accept_prob"].mean()), float(extra["stranded"].mean())


def test_the_flow_fits_the_walkers_when_warm_up_is_as_long_as_the_buffer():
    # The buffer starts as copies of the initial positions. Pooled into the preconditioner, they
    # held it at the prior's spread (10, the posterior's is 0.3) until the last copy was
    # overwritten, in the last warm-up round: the flow, which lives in the preconditioned
    # coordinates, then sat off the walkers for the whole run (global acceptance 0.34, 38 % of
    # walkers stranded, no warning; the num_warmup = 50 is the default buffer). Over
    # 3200 kept moves these thresholds are tens of standard errors from either behaviour.
    for num_warmup in (50, 80):
        accept, stranded = _sampling_health(num_warmup)
        assert accept > 0.8 and stranded < 0.05, (num_warmup, accept, stranded)


def test_control_the_copies_of_the_initial_positions_pooled_leave_the_flow_off(monkeypatch):
    def every_row(state):
        return state.buffer, jnp.ones((len(state.buffer), 1), bool)

    monkeypatch.setattr(warmup, "preconditioner_points", every_row)
    # Without settling, as when the bug was found: settled walkers hid it in this run (0.95).
    accept, stranded = _sampling_health(50, settle=False)
    assert accept < 0.6 and stranded > 0.15, (accept, stranded)
