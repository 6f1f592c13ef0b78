"""The score-matching objectives ``dsm`` and ``ssm``.

Recovery tests fit a Gaussian EBM ``E_θ(x) = ½ (x - m)ᵀ P (x - m) + c`` to fresh draws of the
known 2-D Gaussian ``N(μ, Σ)`` of ``_targets`` (infinite data: no finite-sample bias) with the
objective's own ``prepare`` and ``loss`` in one jitted ``lax.scan`` of Adam steps, and compare
the tilted model's moments with what the method must converge to; a deliberately broken run
(loss negated; for ``dsm``, a wrong noise scale in the target) must fail the same check.
Contract tests cover settings, keys, hand values, and a 2-step run through
:class:`~numpyro_ebm.training.Trainer` with exact resume.

The model is ``exp(-E_θ) ρ`` with ``ρ = N(0, σ_ρ² I)``: its precision is ``P + I/σ_ρ²`` and
its mean ``(P + I/σ_ρ²)⁻¹ P m``, both accounted for exactly (``_objectives.model_moments``).
The energy, the recovery runs (``_objectives.fit``) and the checks are shared with
``test_objectives_nce.py`` through ``_objectives``.
"""

import functools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _objectives import (
    ENERGY,
    NO_WALKERS,
    assert_same_key_same_result,
    assert_trainer_resumes_exactly,
    check_errors,
    fit,
    moment_errors,
)
from _targets import GAUSS_COV, gaussian_draws

from numpyro_ebm.energies import MLPEnergy, TiltedEnergy
from numpyro_ebm.training import DSM, OBJECTIVES, SSM, TrainConfig
from numpyro_ebm.training.objectives import ObjectiveContext, objective_settings

# A wide tilt: it adds I/σ_ρ² = 1e-4 I to the model's precision (accounted for exactly).
BASE_SCALE = 100.0
# The recovery runs are `_objectives.fit`'s: seed 0, 1000 Adam steps on batches of 512.
# Tolerance of the recovery checks: largest absolute error of the model's mean, and largest
# absolute error of its covariance relative to the target's largest entry. Origin: these exact
# runs over seeds 0-11 (36 runs: dsm, multi-noise dsm, ssm) gave at most 0.012 and 0.020;
# 0.05 is 2.5 times that, and far below the controls' errors (wrong noise scale: 3.0,
# negated loss: diverges) and the gap between the smoothed and the data covariance (0.20).
TOL = 0.05


# ---------------------------------------------------------------- recovery: dsm


DSM_SCALE = 0.5
SMOOTHED_COV = GAUSS_COV + DSM_SCALE**2 * np.eye(2)  # the data convolved with N(0, σ² I)
# Levels 0.1, 0.22, 0.46, 1: for Gaussian data and a quadratic energy the σ²-weighted
# multi-noise fixed point is the data smoothed at σ_eff² = mean σ⁴ / mean σ² (the DSM module's
# docstring; it solves P C̄ + C̄ P = 2 w̄ I with C̄ = Σᵢ σᵢ² (Σ + σᵢ² I)).
MULTI_DSM = DSM(noise_scale=1.0, num_noise_levels=4, min_noise_scale=0.1)


def _effective_variance(weights):
    scales = MULTI_DSM.noise_scales()
    return float(np.sum(weights * scales**2) / np.sum(weights))


@functools.cache
def _dsm_fit(broken=None, sign=1.0):
    return fit(DSM(noise_scale=DSM_SCALE), base_scale=BASE_SCALE, broken=broken, sign=sign)[0]


def _report_sigma_twice(objective):
    """The control: the batch reports σ twice the one the noise was drawn with."""

    def prepare(state, energy_params, positives):
        state, (noisy, sigma), metrics = objective.prepare(state, energy_params, positives)
        return state, (noisy, 2.0 * sigma), metrics

    return objective._replace(prepare=prepare)


def test_dsm_recovers_the_smoothed_data_not_the_data():
    errors = moment_errors(_dsm_fit(), BASE_SCALE, SMOOTHED_COV)
    assert check_errors(errors, {"mean": TOL, "cov": TOL}), errors
    # DSM fits p * N(0, σ² I), not p: the same check against Σ itself fails.
    errors = moment_errors(_dsm_fit(), BASE_SCALE, GAUSS_COV)
    assert not check_errors(errors, {"mean": TOL, "cov": TOL}), errors


@pytest.mark.parametrize(
    "control", [{"sign": -1.0}, {"broken": _report_sigma_twice}], ids=["negated", "sigma-x2"]
)
def test_dsm_controls_fail_the_same_check(control):
    errors = moment_errors(_dsm_fit(**control), BASE_SCALE, SMOOTHED_COV)
    assert not check_errors(errors, {"mean": TOL, "cov": TOL}), errors


def test_multi_noise_dsm_recovers_the_sigma_squared_weighted_fit():
    energy, _ = fit(MULTI_DSM, base_scale=BASE_SCALE)
    scales = MULTI_DSM.noise_scales()
    effective = _effective_variance(scales**2)  # λ(σ) = σ²: weights σ² (uniform levels)
    errors = moment_errors(energy, BASE_SCALE, GAUSS_COV + effective * np.eye(2))
    assert check_errors(errors, {"mean": TOL, "cov": TOL}), errors
    # The weighting matters: unweighted levels (λ = 1) would give σ_eff² = mean σ², which the
    # same check rejects.
    unweighted = _effective_variance(np.ones_like(scales))
    errors = moment_errors(energy, BASE_SCALE, GAUSS_COV + unweighted * np.eye(2))
    assert not check_errors(errors, {"cov": TOL}), errors


# ---------------------------------------------------------------- recovery: ssm


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
def test_ssm_recovers_the_data(projection):
    energy, _ = fit(SSM(projection=projection), base_scale=BASE_SCALE)
    errors = moment_errors(energy, BASE_SCALE, GAUSS_COV)
    assert check_errors(errors, {"mean": TOL, "cov": TOL}), errors


def test_ssm_negated_loss_fails_the_same_check():
    energy, _ = fit(SSM(), base_scale=BASE_SCALE, sign=-1.0)
    errors = moment_errors(energy, BASE_SCALE, GAUSS_COV)
    assert not check_errors(errors, {"mean": TOL, "cov": TOL}), errors


# ---------------------------------------------------------------- hand values


def _random_mlp_energy():
    """A small MLP energy with a non-zero output layer (E ≢ 0, curved)."""
    energy = MLPEnergy(2, width=8, depth=2, key=jax.random.key(1))
    weight = jax.random.normal(jax.random.key(2), energy.mlp.layers[-1].weight.shape)
    return eqx.tree_at(lambda e: e.mlp.layers[-1].weight, energy, weight)


def test_ssm_jacobian_term_is_minus_v_hessian_v():
    energy = _random_mlp_energy()
    context = ObjectiveContext(energy, 2, 1.5, 3)
    params, _ = context.energy_partition()
    objective = SSM(num_projections=2).build(context)
    x = jax.random.normal(jax.random.key(3), (3, 2))
    directions = jax.random.normal(jax.random.key(4), (3, 2, 2))
    loss, metrics = jax.jit(objective.loss)(params, x, directions)

    potential_fn = TiltedEnergy(energy, 1.5)
    hessians = jax.jit(jax.vmap(jax.hessian(potential_fn)))(x)
    # s = -∇U, so vᵀ ∇s v = -vᵀ H_U v; averaged over the 2 directions and the 3 points.
    expected_jacobian = -jnp.mean(jnp.einsum("npi,nij,npj->np", directions, hessians, directions))
    expected_score = 0.5 * jnp.mean(jnp.sum(jax.vmap(jax.grad(potential_fn))(x) ** 2, -1))
    np.testing.assert_allclose(metrics["jacobian_term"], expected_jacobian, rtol=1e-5)
    np.testing.assert_allclose(metrics["score_term"], expected_score, rtol=1e-5)
    np.testing.assert_allclose(loss, expected_jacobian + expected_score, rtol=1e-5)


def test_dsm_loss_hand_value():
    energy = _random_mlp_energy()
    context = ObjectiveContext(energy, 2, 1.5, 3)
    params, _ = context.energy_partition()
    objective = DSM().build(context)
    x = jax.random.normal(jax.random.key(3), (3, 2))
    sigma = jnp.array([0.1, 0.5, 2.0])
    noisy = x + sigma[:, None] * jax.random.normal(jax.random.key(4), (3, 2))
    loss, _ = objective.loss(params, x, (noisy, sigma))
    score = -jax.vmap(jax.grad(TiltedEnergy(energy, 1.5)))(noisy)
    terms = sigma**2 / 2 * jnp.sum((score + (noisy - x) / sigma[:, None] ** 2) ** 2, -1)
    np.testing.assert_allclose(loss, jnp.mean(terms), rtol=1e-5)


# ---------------------------------------------------------------- contracts


@pytest.mark.parametrize(
    ("cls", "changes", "match"),
    [
        (DSM, {"noise_scale": 0.0}, "noise_scale"),
        (DSM, {"num_noise_levels": 0}, "num_noise_levels"),
        (DSM, {"min_noise_scale": -1.0}, "min_noise_scale"),
        (DSM, {"num_noise_levels": 3, "min_noise_scale": 0.2}, "min_noise_scale"),
        (SSM, {"projection": "uniform"}, "projection"),
        (SSM, {"num_projections": 0}, "num_projections"),
    ],
)
def test_settings_validation_names_the_setting(cls, changes, match):
    with pytest.raises(ValueError, match=match):
        cls(**changes)


@pytest.mark.parametrize(
    "settings",
    [DSM(), MULTI_DSM, SSM(), SSM(projection="gaussian", num_projections=3)],
    ids=["dsm", "dsm-multi", "ssm", "ssm-gaussian"],
)
def test_settings_round_trip(settings):
    as_json = json.loads(json.dumps(settings.to_dict()))
    assert OBJECTIVES[settings.name] is type(settings)
    assert type(settings).from_dict(as_json) == settings
    assert objective_settings(as_json) == settings
    config = TrainConfig(objective=settings)
    assert TrainConfig.from_dict(config.to_dict()).objective == settings


def test_dsm_noise_levels_and_draws():
    assert MULTI_DSM.noise_scales()[[0, -1]].tolist() == pytest.approx([0.1, 1.0])
    objective = MULTI_DSM.build(ObjectiveContext(ENERGY, 2, BASE_SCALE, 1024))
    params, _ = eqx.partition(ENERGY, eqx.is_array)
    x = jnp.zeros((1024, 2))
    state = objective.init(jax.random.key(5), NO_WALKERS, params)
    _, (noisy, sigma), _ = objective.prepare(state, params, x)
    # Every level is drawn (each has probability 1/4 in 1024 draws) and nothing else.
    np.testing.assert_allclose(np.unique(sigma), MULTI_DSM.noise_scales(), rtol=1e-6)
    # (x̃ - x)/σ is standard normal: 2048 coordinates, variance 1 ± 5 standard errors
    # (sd of a sample variance ≈ sqrt(2/2048) = 0.031; false alarm ~ 6e-7).
    assert abs(float(jnp.var(noisy / sigma[:, None])) - 1.0) < 5 * 0.031


@pytest.mark.parametrize("settings", [MULTI_DSM, SSM()], ids=["dsm", "ssm"])
def test_same_key_same_result_and_interface(settings):
    objective = settings.build(ObjectiveContext(ENERGY, 2, BASE_SCALE, 8))
    (state, _), _ = assert_same_key_same_result(objective, gaussian_draws(jax.random.key(6), 8))
    assert objective.positions(state) is None and objective.get_flow(state) is None


@pytest.mark.parametrize("settings", [DSM(), SSM()], ids=["dsm", "ssm"])
def test_trainer_runs_and_resumes_exactly(settings, tmp_path):
    result = assert_trainer_resumes_exactly(settings, tmp_path)
    assert result.flow is None
    assert result.trainer.negatives(result.state) is None
