"""The noise-contrastive objective ``nce`` (flow as the noise, trained alongside).

Recovery tests fit the Gaussian EBM of ``_objectives`` (with its constant ``c``)
to fresh draws of ``N(μ, Σ)`` and check that NCE recovers μ, Σ *and* the log normaliser: a
normalised model needs ``c = log ∫ exp(-E₀) ρ``, known in closed form (:func:`true_constant`).
The same run with the loss negated must fail the same check. Contract tests cover the loss's
hand value, the flow step's direction, settings, keys, and a 2-step
:class:`~numpyro_ebm.training.Trainer` run with exact resume.
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
    PARAMS,
    assert_same_key_same_result,
    assert_trainer_resumes_exactly,
    check_errors,
    fit,
    moment_errors,
)
from _targets import GAUSS_COV, GAUSS_MEAN, gaussian_draws

from numpyro_ebm.training import NCE, OBJECTIVES, TrainConfig
from numpyro_ebm.training.objectives import ObjectiveContext, objective_settings
from numpyro_ebm.training.objectives.nce import nce_loss

# The flow starts as ρ (scale σ_ρ) and must reach the data's scale ~1 with Adam steps of
# ~1e-2: a tilt of 3 (not the score tests' 100) keeps that to a few hundred steps.
BASE_SCALE = 3.0
FLOW_LEARNING_RATE = 1e-2
# Tolerance on the mean (absolute), covariance (relative to its largest entry) and constant c
# (absolute, in nats). Origin: these exact runs over seeds 0-7 (fce, 600 steps) and 0-4 (mle,
# 1500 steps) gave at most 0.018 (mean), 0.021 (covariance) and 0.014 (c); 0.05 is 2.5 times
# that, far below the negated-loss control's errors (the model diverges: > 0.99, > 30).
TOL = {"mean": 0.05, "cov": 0.05, "constant": 0.05}
# mle's flow converges more slowly, and its c with it (errors up to 0.07 at 600 steps).
NUM_STEPS = {"fce": 600, "mle": 1500}


def true_constant(base_scale):
    """The ``c`` that normalises ``exp(-½ (x - m)ᵀ P (x - m) - c) ρ(x)`` when it is N(μ, Σ).

    ``P = Σ⁻¹ - I/σ_ρ²``, ``P m = Σ⁻¹ μ``; completing the square,
    ``c = ½ log|Σ| - d log σ_ρ + ½ μᵀ Σ⁻¹ μ - ½ mᵀ P m``.
    """
    precision = np.linalg.inv(GAUSS_COV)
    energy_precision = precision - np.eye(2) / base_scale**2
    energy_mean = np.linalg.solve(energy_precision, precision @ GAUSS_MEAN)
    return (
        0.5 * np.linalg.slogdet(GAUSS_COV)[1]
        - 2 * np.log(base_scale)
        + 0.5 * GAUSS_MEAN @ precision @ GAUSS_MEAN
        - 0.5 * energy_mean @ energy_precision @ energy_mean
    )


def _errors(energy):
    errors = moment_errors(energy, BASE_SCALE, GAUSS_COV)
    errors["constant"] = abs(float(energy.constant) - true_constant(BASE_SCALE))
    return errors


def _fit(flow_objective, sign=1.0):
    settings = NCE(flow_objective=flow_objective, flow_learning_rate=FLOW_LEARNING_RATE)
    return fit(
        settings,
        base_scale=BASE_SCALE,
        num_steps=NUM_STEPS[flow_objective],
        batch_size=256,
        sign=sign,
    )


def test_true_constant_normalises_the_model():
    # The oracle itself: with the true (m, P, c), -U(x) is log N(x; μ, Σ) at any x.
    x = np.array([0.3, -1.2])
    precision = np.linalg.inv(GAUSS_COV)
    energy_precision = precision - np.eye(2) / BASE_SCALE**2
    energy_mean = np.linalg.solve(energy_precision, precision @ GAUSS_MEAN)
    residual = x - energy_mean
    log_rho = -0.5 * x @ x / BASE_SCALE**2 - np.log(2 * np.pi * BASE_SCALE**2)
    minus_potential = -0.5 * residual @ energy_precision @ residual - true_constant(BASE_SCALE)
    gap = x - GAUSS_MEAN
    log_normal = -0.5 * gap @ precision @ gap - 0.5 * np.log(np.linalg.det(2 * np.pi * GAUSS_COV))
    np.testing.assert_allclose(minus_potential + log_rho, log_normal, rtol=1e-12)


@pytest.mark.parametrize("flow_objective", ["fce", "mle"])
def test_nce_recovers_gaussian_and_log_normaliser(flow_objective):
    energy, _ = _fit(flow_objective)
    errors = _errors(energy)
    assert check_errors(errors, TOL), errors


def test_nce_negated_loss_fails_the_same_check():
    energy, _ = _fit("fce", sign=-1.0)
    errors = _errors(energy)
    assert not check_errors(errors, TOL), errors


# ---------------------------------------------------------------- hand values


def test_nce_loss_hand_value():
    # ν = 2 (6 noise draws for 3 data points), written with log σ instead of softplus.
    positive_potential, positive_log_q = jnp.array([0.5, -1.0, 2.0]), jnp.array([-1.0, 0.0, 0.3])
    negative_potential = jnp.array([1.0, 0.0, -0.5, 3.0, 2.0, 0.1])
    negative_log_q = jnp.array([-2.0, -1.0, 0.5, -0.2, 0.0, -3.0])
    loss, metrics = nce_loss(positive_potential, negative_potential, positive_log_q, negative_log_q)
    positive_log_odds = -positive_potential - positive_log_q - np.log(2.0)
    negative_log_odds = -negative_potential - negative_log_q - np.log(2.0)
    expected = -jnp.mean(jax.nn.log_sigmoid(positive_log_odds)) - 2.0 * jnp.mean(
        jnp.log1p(-jax.nn.sigmoid(negative_log_odds))
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    correct = np.sum(positive_log_odds > 0) + np.sum(negative_log_odds < 0)
    np.testing.assert_allclose(metrics["classification_accuracy"], correct / 9)


@functools.cache
def _small_objective(flow_objective):
    """``nce`` with ν = 1.5 on batches of 8 (one compilation of ``prepare`` each)."""
    settings = NCE(noise_ratio=1.5, flow_objective=flow_objective)
    return settings.build(ObjectiveContext(ENERGY, 2, BASE_SCALE, 8))


@pytest.mark.parametrize("flow_objective", ["fce", "mle"])
def test_flow_step_descends_its_loss(flow_objective):
    # One Adam step (lr 1e-3) on the flow: its own loss, on the same noise key and data, falls.
    objective = _small_objective(flow_objective)
    x = gaussian_draws(jax.random.key(1), 8)
    state = objective.init(jax.random.key(2), NO_WALKERS, PARAMS)
    prepare = jax.jit(objective.prepare)
    new_state, _, metrics = prepare(state, PARAMS, x)
    _, _, again = prepare(new_state._replace(rng_key=state.rng_key), PARAMS, x)
    assert float(again["flow_loss"]) < float(metrics["flow_loss"])


# ---------------------------------------------------------------- contracts


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"noise_ratio": 0.0}, "noise_ratio"),
        ({"flow_objective": "kl"}, "flow_objective"),
        ({"flow_learning_rate": -1.0}, "flow_learning_rate"),
    ],
)
def test_settings_validation_names_the_setting(changes, match):
    with pytest.raises(ValueError, match=match):
        NCE(**changes)


def test_settings_round_trip():
    settings = NCE(noise_ratio=2.5, flow_objective="mle", flow_learning_rate=3e-4)
    as_json = json.loads(json.dumps(settings.to_dict()))
    assert OBJECTIVES["nce"] is NCE
    assert NCE.from_dict(as_json) == settings and objective_settings(as_json) == settings
    config = TrainConfig(objective=settings)
    assert TrainConfig.from_dict(config.to_dict()).objective == settings


def test_same_key_same_result_and_interface():
    objective = _small_objective("fce")
    x = gaussian_draws(jax.random.key(6), 8)
    (initial_state, (state, batch, _)), _ = assert_same_key_same_result(objective, x)
    negatives, negative_log_q, positive_log_q = batch
    assert negatives.shape == (NCE(noise_ratio=1.5).num_noise(8), 2) == (12, 2)
    assert negative_log_q.shape == (12,) and positive_log_q.shape == (8,)
    assert objective.positions(state) is None
    # log q of the batch is the flow's before its step, the flow that drew the noise.
    initial_flow = objective.get_flow(initial_state)
    log_prob = eqx.filter_jit(lambda flow, points: flow.log_prob(points))
    np.testing.assert_allclose(log_prob(initial_flow, x), positive_log_q, rtol=1e-5)
    np.testing.assert_allclose(log_prob(initial_flow, negatives), negative_log_q, rtol=1e-4)


def test_trainer_runs_and_resumes_exactly(tmp_path):
    result = assert_trainer_resumes_exactly(NCE(), tmp_path)
    assert result.flow is not None
    assert {"classification_accuracy", "flow_loss"} <= set(result.history[-1])
