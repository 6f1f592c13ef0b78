"""An EBM on top of a fitted flow: starts equal to the flow, keeps it frozen, trains the rest."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _objectives import TRAINER_SETTINGS
from flowjax.distributions import Normal
from scipy.stats import norm

from numpyro_ebm.energies import MLPEnergy, TiltedEnergy
from numpyro_ebm.flow_base import FlowBaseEnergy, fit_base_flow
from numpyro_ebm.flows import default_flow
from numpyro_ebm.training import TrainConfig, Trainer, load_model, save_model, save_result


@pytest.fixture(scope="module")
def fitted():
    data = np.random.default_rng(0).normal([0.5, -0.5], [0.6, 1.2], size=(400, 2))
    flow, losses = fit_base_flow(jax.random.key(0), data, flow_layers=2, nn_width=16,
                                 max_epochs=300, max_patience=50)  # fmt: skip
    return data, flow, losses


def test_a_maf_base_flow_learns_the_data_too():
    data = np.random.default_rng(0).normal([0.5, -0.5], [0.6, 1.2], size=(400, 2))
    flow, losses = fit_base_flow(jax.random.key(0), data, kind="maf", flow_layers=2, nn_width=16,
                                 max_epochs=100, max_patience=20)  # fmt: skip
    assert "MaskedAutoregressive" in repr(flow)
    exact = norm.logpdf(data, [0.5, -0.5], [0.6, 1.2]).sum(1).mean()
    assert abs(float(jnp.mean(jax.vmap(flow.log_prob)(data))) - exact) < 0.15
    assert losses[-1] < losses[0]


def test_the_fitted_flow_learns_the_data(fitted):
    _, flow, losses = fitted
    fresh = np.random.default_rng(1).normal([0.5, -0.5], [0.6, 1.2], size=(4000, 2))
    exact = norm.logpdf(fresh, [0.5, -0.5], [0.6, 1.2]).sum(1).mean()
    fitted_ll = float(jnp.mean(jax.vmap(flow.log_prob)(fresh)))
    # Within 0.15 nats of the truth; the unfitted start (N(0, I)) is 0.3 nats off: the control.
    assert abs(fitted_ll - exact) < 0.15
    assert exact - norm.logpdf(fresh).sum(1).mean() > 0.3
    assert losses[-1] < losses[0]


def test_the_model_starts_as_the_flow_and_the_flow_is_frozen(fitted):
    _, flow, _ = fitted
    energy = FlowBaseEnergy(MLPEnergy(2, width=8, depth=1, key=jax.random.key(2)), flow, 1.5)
    x = jnp.array([[0.3, -2.0], [1.5, 0.5]])
    total = jax.vmap(TiltedEnergy(energy, 1.5))(x)
    np.testing.assert_allclose(total, -jax.vmap(flow.log_prob)(x), rtol=1e-5, atol=1e-5)
    params, static = eqx.partition(energy, eqx.is_inexact_array)
    grads = jax.grad(lambda p: eqx.combine(p, static)(x[0]))(params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads.base_flow))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads.correction))


def test_trainer_starts_walkers_and_sampler_flow_from_the_base(fitted, tmp_path):
    data, flow, _ = fitted
    path = tmp_path / "points.npy"
    np.save(path, data)
    config = TrainConfig().with_settings(
        **(TRAINER_SETTINGS | dict(steps_per_epoch=4, num_walkers=64)),
        base_scale=1.0,
        preprocess="none",
    )
    energy = FlowBaseEnergy(MLPEnergy(2, width=8, depth=1, key=jax.random.key(2)), flow, 1.0)
    trainer = Trainer(path, config, energy=energy)
    walkers = np.asarray(trainer.negatives(trainer.init_state()))
    np.testing.assert_allclose(walkers.mean(0), data.mean(0), atol=0.4)  # q₀'s, not ρ's 0
    result = trainer.fit(progress_bar=False)
    assert np.isfinite(result.history[-1]["val_log_likelihood"])
    frozen = eqx.filter(trainer.energy(result.state).base_flow, eqx.is_inexact_array)
    for before, after in zip(jax.tree.leaves(eqx.filter(flow, eqx.is_inexact_array)),
                             jax.tree.leaves(frozen), strict=True):  # fmt: skip
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="base_scale"):
        Trainer(path, config.replace(base_scale=2.0), energy=energy)
    # Regression: the flow fitted from q₀ was saved, but loading rebuilt the default flow as
    # its template and failed ("changed shape ... on disk").
    out = save_result(tmp_path / "run", result)
    assert json.loads((out / "model.json").read_text())["flow"] == "energy"
    loaded = load_model(out, energy=energy)
    point = jnp.array([0.3, -0.4])
    assert float(loaded.flow.log_prob(point)) == float(result.flow.log_prob(point))


def test_a_saved_flow_records_which_flow_it_started_from(fitted, tmp_path):
    _, flow, _ = fitted
    energy = FlowBaseEnergy(MLPEnergy(2, width=8, depth=1, key=jax.random.key(2)), flow, 1.0)
    # nt and nce fit the default flow whatever the energy: it loads as the default flow.
    default = default_flow(jax.random.key(5), 2, loc=0.0, scale=1.0)
    save_model(tmp_path / "nt", energy, 1.0, flow=default, dim=2)
    assert json.loads((tmp_path / "nt" / "model.json").read_text())["flow"] == "default"
    point = jnp.array([0.3, -0.4])
    reloaded = load_model(tmp_path / "nt", energy=energy).flow
    assert float(reloaded.log_prob(point)) == float(default.log_prob(point))
    # A flow that neither start can hold is refused when saving, not when loading.
    with pytest.raises(ValueError, match="expected `flow` to be a fitted copy of the flow"):
        save_model(tmp_path / "other", energy, 1.0, flow=Normal(jnp.zeros(2)), dim=2)


def test_bad_parts_are_clear_errors():
    with pytest.raises(TypeError, match="flowjax distribution"):
        FlowBaseEnergy(MLPEnergy(2, key=jax.random.key(0)), "flow", 1.0)
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        fit_base_flow(jax.random.key(0), np.zeros(5))
    with pytest.raises(ValueError, match=r"'coupling', 'maf'.*'realnvp'"):
        fit_base_flow(jax.random.key(0), np.zeros((5, 2)), kind="realnvp")
    assert FlowBaseEnergy(lambda x: 0.0, Normal(jnp.zeros(2)), 1.0).initial_flow().shape == (2,)


def test_heldout_likelihood_proposes_from_the_base_flow_not_a_poor_run_flow():
    # The model starts as q₀ = N(1, I) exactly (zero correction): from q₀ every importance
    # weight is 1, so log Z = 0 with an ESS of all draws, whatever the run's flow is.
    from numpyro_ebm.likelihood import importance_log_normalizer
    from numpyro_ebm.preprocessing import Preprocessing
    from numpyro_ebm.training.heldout import heldout_metrics

    q0 = Normal(jnp.ones(2))
    energy = FlowBaseEnergy(MLPEnergy(2, key=jax.random.key(0)), q0, 1.0)
    poor_flow = Normal(jnp.full(2, 50.0))  # nowhere near the model
    points = np.array([[0.0, 1.0], [2.0, -1.0], [1.0, 1.0]])
    metrics = heldout_metrics(
        jax.random.key(1), energy, 1.0, poor_flow, Preprocessing.identity(2), points,
        num_samples=512,
    )  # fmt: skip
    assert metrics["method"] == "importance"
    assert metrics["importance_ess"] == pytest.approx(512, rel=1e-3)
    assert metrics["log_normalizer"] == pytest.approx(0.0, abs=1e-4)
    expected = float(jnp.mean(jax.vmap(q0.log_prob)(jnp.asarray(points))))
    assert metrics["heldout_log_likelihood"] == pytest.approx(expected, abs=1e-4)
    # Control: the same estimate from the poor flow has almost no effective draws.
    control = importance_log_normalizer(
        jax.random.key(1), TiltedEnergy(energy, 1.0), poor_flow, 512
    )
    assert control.ess < 5


def test_a_proposal_flow_starts_the_sampler_while_walkers_and_log_z_come_from_the_base(
    fitted, tmp_path
):
    # q₀ is the fitted flow (mean (0.5, -0.5)); the proposal, a Normal at (3, 3), must be the
    # sampler's first flow, while the walkers start as exact draws of the model (q₀) and log Z
    # stays exact from q₀ (the control: from the proposal it is not).
    from numpyro_ebm.likelihood import importance_log_normalizer
    from numpyro_ebm.training.heldout import heldout_metrics

    data, flow, _ = fitted
    proposal = Normal(jnp.full(2, 3.0))
    energy = FlowBaseEnergy(MLPEnergy(2, width=8, depth=1, key=jax.random.key(2)), flow, 1.0,
                            proposal_flow=proposal)  # fmt: skip
    assert energy.initial_flow() is proposal
    path = tmp_path / "points.npy"
    np.save(path, data)
    config = TrainConfig().with_settings(
        **(TRAINER_SETTINGS | dict(num_walkers=256)), base_scale=1.0, preprocess="none"
    )
    trainer = Trainer(path, config, energy=energy)
    state = trainer.init_state()
    walkers = np.asarray(trainer.negatives(state))
    np.testing.assert_allclose(walkers.mean(0), data.mean(0), atol=0.3)
    np.testing.assert_allclose(trainer.flow(state).loc, proposal.loc)
    metrics = heldout_metrics(jax.random.key(1), energy, 1.0, None, trainer.preprocessing,
                              data[:50], num_samples=512)  # fmt: skip
    assert metrics["importance_ess"] == pytest.approx(512, rel=1e-3)
    control = importance_log_normalizer(jax.random.key(1), TiltedEnergy(energy, 1.0), proposal, 512)
    assert control.ess < 0.5 * 512
    with pytest.raises(ValueError, match="proposal_flow"):
        FlowBaseEnergy(MLPEnergy(2, key=jax.random.key(0)), flow, 1.0, Normal(jnp.zeros(3)))
    with pytest.raises(TypeError, match="proposal_flow"):
        FlowBaseEnergy(MLPEnergy(2, key=jax.random.key(0)), flow, 1.0, "flow")
