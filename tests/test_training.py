import json
import math
import os
import pickle
import subprocess
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _objectives import TRAINER_SETTINGS, assert_same_run

from numpyro_ebm.datasets import get_dataset
from numpyro_ebm.energies import MLPEnergy, base_log_prob
from numpyro_ebm.flows import default_flow
from numpyro_ebm.metrics import grid, grid_log_density
from numpyro_ebm.training import (
    NEGATIVE_SAMPLERS,
    PCD,
    TrainConfig,
    Trainer,
    ebm_loss,
    evaluate,
    load_energy,
    load_model,
    make_negative_sampler,
    save_model,
    train,
    train_step,
)
from numpyro_ebm.training.checkpoint import checkpoint_paths, save_checkpoint

# A tiny 2-D run: small enough for seconds on 2 CPU cores, big enough for the flowMC EBM to
# find the 1:2 weights of two-modes-2to1 (METHOD.md §4).
TINY = dict(
    num_epochs=2,
    steps_per_epoch=150,
    num_walkers=128,
    batch_size=128,
    energy_width=32,
    energy_depth=2,
    num_particles=16,
    num_local_steps=2,
    fit_batch_size=128,
    num_data=4000,
    grid_points=60,
    learning_rate=3e-3,
    # A ~50-step average: the run is 300 steps long.
    ema_decay=0.98,
    checkpoint_every=50,
)
# Steps-only settings for contract tests: the objectives' tests' trainer run, 4 steps an epoch.
MINI = TRAINER_SETTINGS | dict(
    steps_per_epoch=4, num_walkers=16, num_particles=4, num_local_steps=1, fit_batch_size=16
)
HEAVY = 2 / 3


@pytest.fixture(scope="module")
def flowmc_runs(tmp_path_factory):
    """The tiny flowMC run, uninterrupted and "killed" after one epoch then resumed."""
    out = tmp_path_factory.mktemp("flowmc")
    trainer = Trainer("two-modes-2to1", TrainConfig().with_settings(**TINY))
    full = trainer.fit(out_dir=out / "full", progress_bar=False)
    trainer.fit(out_dir=out / "split", progress_bar=False, num_epochs=1)
    resumed = trainer.fit(out_dir=out / "split", resume=True, progress_bar=False)
    return full, resumed, out


@pytest.fixture(scope="module")
def flowmc_run(flowmc_runs):
    return flowmc_runs[0]


@pytest.fixture(scope="module")
def ula_run():
    trainer = Trainer("two-modes-2to1", TrainConfig().with_settings(**TINY, sampler="ula"))
    return trainer.fit(progress_bar=False)


def _heavy_weight(result):
    return result.history[-1]["mode_weights"][1]


# ---------------------------------------------------------------- the loss


def test_ebm_loss_hand_value_and_gradient():
    # E_θ(x) = θ · x in 1-D: loss = θ (mean x⁺ - mean x⁻) + l2 θ² (mean x⁺² + mean x⁻²).
    positives, negatives = jnp.array([[1.0], [3.0]]), jnp.array([[-1.0], [0.0], [1.0]])
    theta = jnp.array(0.5)
    static = lambda x: 0.0  # noqa: E731  (combined with the array θ, E = θ·x below)

    def energy_loss(theta):
        energy = lambda x: theta * x[0]  # noqa: E731
        return ebm_loss(eqx.filter(energy, eqx.is_array), energy, positives, negatives, 0.1)[0]

    loss = energy_loss(theta)
    assert math.isclose(float(loss), 0.5 * 2.0 + 0.1 * 0.25 * (5.0 + 2 / 3), rel_tol=1e-6)
    grad = jax.grad(energy_loss)(theta)
    assert math.isclose(float(grad), 2.0 + 0.1 * 2 * 0.5 * (5.0 + 2 / 3), rel_tol=1e-5)
    del static


# ---------------------------------------------------------------- training works


def test_loss_falls_and_parameters_move():
    trainer = Trainer(
        "two-modes-2to1", TrainConfig().with_settings(**MINI, sampler="ula", learning_rate=1e-2)
    )
    state = trainer.init_state()
    data = trainer.data[: MINI["batch_size"]]
    step = jax.jit(
        lambda state, data: train_step(
            state,
            data,
            objective=trainer.objective,
            optimizer=trainer.optimizer,
            batch_size=MINI["batch_size"],
        )
    )
    new_state, info = step(state, data)
    # E ≡ 0 at start, so the loss starts at exactly 0.
    assert float(info["loss"]) == 0.0
    # One step lowers the loss on the same positives and negatives (gradient descent).
    negatives = trainer.negatives(new_state)
    positives = data[
        jax.random.randint(
            jax.random.split(state.rng_key)[1], (MINI["batch_size"],), 0, data.shape[0]
        )
    ]

    def loss(params):
        return float(ebm_loss(params, trainer.energy_static, positives, negatives)[0])

    assert loss(new_state.energy_params) < loss(state.energy_params)
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), state.energy_params, new_state.energy_params
    )
    assert any(jax.tree.leaves(changed))
    # Only the last layer has a gradient at E ≡ 0 (the hidden layers' gradients carry a factor
    # of its zero weights); one more step moves every array but the final bias, a constant
    # offset of E to which the contrastive loss is blind (its gradient is 1 - 1 = 0).
    new_state, _ = step(new_state, data)
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), state.energy_params, new_state.energy_params
    )
    assert jax.tree.leaves(changed) == [True, True, True, False]


def test_history_records_each_epoch(flowmc_run):
    assert [entry["epoch"] for entry in flowmc_run.history] == [1, 2]
    entry = flowmc_run.history[0]
    assert set(entry) >= {
        "epoch",
        "step",
        "loss",
        "energy_gap",
        "accept_prob",
        "global_accept_prob",
        "flow_loss",
        "mode_weights",
        "time_s",
    }
    assert entry["step"] == TINY["steps_per_epoch"]
    # Early steps have E lower on data than on the negatives: the epoch's mean loss is < 0.
    assert entry["loss"] < 0


def test_flowmc_recovers_two_modes_weights_and_mean(flowmc_run):
    # Tolerances: the EMA model's heavy-mode weight fluctuates by about 0.02 between seeds in
    # this 300-step run (0.67-0.70 on seeds 0 and 1), plus the 4000-point training set's
    # sampling error sqrt(2/9/4000) = 0.007; 0.05 leaves room for both.
    assert abs(_heavy_weight(flowmc_run) - HEAVY) < 0.05
    # Mean of the model density on the grid: truth is (-1.5/3 + 1.5·2/3) = 0.5 per axis; the
    # heavy-weight tolerance 0.05 moves it by 3 · 0.05 = 0.15.
    trainer = flowmc_run.trainer
    points, cell_area = grid(trainer.dataset.bounds, 80)
    density = jnp.exp(
        grid_log_density(trainer.total_energy_fn(flowmc_run.state), trainer.dataset.bounds, 80)
    )
    mean = np.asarray(jnp.sum(density[:, None] * points, axis=0) * cell_area)
    np.testing.assert_allclose(mean, [0.5, 0.5], atol=0.15)
    # The flow's global moves work: i-SIR picks a fresh particle most of the time.
    assert flowmc_run.history[-1]["global_accept_prob"] > 0.5


def test_flowmc_beats_broken_ula_on_mode_weights(flowmc_run, ula_run):
    # ULA with [A]'s step cannot move mass between the modes once the barrier forms, so its
    # EBM drifts toward one mode ([A]: "ULA-EBM ends ≈ 0.90, swings 0↔1").
    flowmc_error = abs(_heavy_weight(flowmc_run) - HEAVY)
    ula_error = abs(_heavy_weight(ula_run) - HEAVY)
    assert flowmc_error < ula_error
    assert ula_error > 0.1


@pytest.mark.parametrize("sampler", ["ula", "mala", "nt"])
def test_each_sampler_runs_a_few_steps(sampler):
    config = TrainConfig().with_settings(
        **{**MINI, "num_epochs": 1, "steps_per_epoch": 2}, sampler=sampler
    )
    result = train("two-modes-2to1", config, progress_bar=False)
    assert int(result.state.step) == 2
    assert np.all(np.isfinite(np.asarray(result.trainer.negatives(result.state))))
    entry = result.history[0]
    assert 0 <= entry["accept_prob"] <= 1
    assert (result.flow is not None) == (sampler == "nt")
    # Only what the sampler measures: no 0 global acceptance or NaN flow loss without a flow.
    flow_metrics = {"global_accept_prob", "flow_loss", "stranded_fraction"}
    assert flow_metrics & set(entry) == ({"flow_loss"} if sampler == "nt" else set())
    if sampler == "nt":
        assert math.isfinite(entry["flow_loss"])


def test_flowmc_sampler_runs_and_fits_its_flow(flowmc_run):
    entry = flowmc_run.history[-1]
    assert math.isfinite(entry["flow_loss"])
    assert flowmc_run.flow is not None
    assert flowmc_run.trainer.objective.name == "pcd"


def test_negative_samplers_interface_under_jit():
    energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
    params = eqx.filter(energy, eqx.is_array)
    positions = jax.random.normal(jax.random.key(1), (8, 2))
    sampler = make_negative_sampler("ula", energy, 2, 1.0, num_steps=3)
    state = sampler.init(jax.random.key(2), positions, params)
    state_jit, info = jax.jit(sampler.step)(state, params)
    state_eager, _ = sampler.step(state, params)
    np.testing.assert_allclose(
        sampler.positions(state_jit), sampler.positions(state_eager), rtol=1e-5, atol=1e-6
    )
    assert info.accept_prob.shape == ()
    with pytest.raises(ValueError, match="sampler"):
        make_negative_sampler("hmc", energy, 2, 1.0)
    with pytest.raises(ValueError, match="num_walkers"):
        sampler.init(jax.random.key(2), jnp.zeros((8, 3)), params)
    assert NEGATIVE_SAMPLERS == ("flowmc", "ula", "mala", "nt")


def test_walkers_start_from_base_density():
    trainer = Trainer(
        "two-modes-2to1",
        TrainConfig().with_settings(**{**MINI, "num_walkers": 4000}, sampler="ula"),
    )
    walkers = np.asarray(trainer.negatives(trainer.init_state()))
    # ρ = N(0, σ² I): 4000 draws give the std to ±3·σ/sqrt(2·4000) ≈ 0.034σ (3 sigma).
    np.testing.assert_allclose(walkers.std(axis=0), trainer.base_scale, rtol=0.04)
    np.testing.assert_allclose(walkers.mean(axis=0), 0.0, atol=3 * trainer.base_scale / 63)


# ---------------------------------------------------------------- checkpoints and resume


def test_resume_is_exact_and_checkpoints_are_not_pickle(flowmc_runs):
    full, resumed, out = flowmc_runs
    assert_same_run(full, resumed)
    assert int(resumed.state.step) == 2 * TINY["steps_per_epoch"]

    # Checkpoints every 50 steps, the last `keep_checkpoints=2` kept.
    kept = checkpoint_paths(out / "full" / "checkpoints")
    assert [step for step, _ in kept] == [250, 300]
    # Not pickle: every record of the file is a .npy array that loads without pickle.
    for _, path in kept:
        raw = path.read_bytes()
        assert not raw.startswith(b"\x80")
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads(raw)
        with path.open("rb") as handle:
            count = 0
            while handle.tell() < len(raw):
                np.load(handle, allow_pickle=False)
                count += 1
        assert count == len(jax.tree.leaves(full.state))


def test_resume_rejects_other_settings(tmp_path):
    config = TrainConfig().with_settings(**MINI, sampler="ula")
    Trainer("two-modes-2to1", config).fit(out_dir=tmp_path, progress_bar=False, num_epochs=1)
    with pytest.raises(ValueError, match="batch_size: saved 16, given 32"):
        Trainer("two-modes-2to1", config.replace(batch_size=32)).fit(
            out_dir=tmp_path, resume=True, progress_bar=False
        )
    with pytest.raises(ValueError, match="out_dir"):
        Trainer("two-modes-2to1", config).fit(resume=True, progress_bar=False)


# ---------------------------------------------------------------- data and settings errors


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
        (np.zeros(5), "2-D"),
        (np.zeros((0, 2)), "non-empty"),
    ],
)
def test_bad_data_files_are_clear_errors(tmp_path, data, match):
    path = tmp_path / "data.npy"
    np.save(path, data)
    with pytest.raises(ValueError, match=match):
        Trainer(path, TrainConfig().with_settings(**MINI))


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(ValueError, match="built-in dataset name"):
        Trainer("three-moons", TrainConfig().with_settings(**MINI))


def test_a_state_of_another_dimension_is_a_clear_error(ula_run):
    points = np.random.default_rng(0).normal(size=(64, 3))
    trainer = Trainer(points, ula_run.trainer.config)
    with pytest.raises(ValueError, match=r"dimension 3, 128 walkers\): energy parameters"):
        trainer.fit(ula_run.state, progress_bar=False)
    with pytest.raises(TypeError, match=r"expected `state` a TrainState.*got dict"):
        trainer.fit(dict(ula_run.state._asdict()), progress_bar=False)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"num_walkers": 64}, r"state.walkers.position of shape \(64, 2\), got \(128, 2\)"),
        ({"sampler": "mala"}, r"an objective state FlowMCState, got ULAState"),
    ],
)
def test_a_state_of_other_walkers_or_another_sampler_is_a_clear_error(ula_run, settings, match):
    # Regression: other walkers trained on silently (settings.json recorded the trainer's
    # count), another sampler's state failed deep inside JAX with a pytree error.
    trainer = Trainer("two-modes-2to1", ula_run.trainer.config.with_settings(**settings))
    with pytest.raises(ValueError, match=match):
        trainer.fit(ula_run.state, progress_bar=False)


def test_file_dataset_trains(tmp_path):
    path = tmp_path / "points.csv"
    points = np.random.default_rng(0).normal(size=(200, 3)) + 1.0
    np.savetxt(path, points, delimiter=",")
    result = train(
        path,
        TrainConfig().with_settings(**{**MINI, "num_epochs": 1}, sampler="ula"),
        progress_bar=False,
    )
    assert result.trainer.dim == 3
    assert "mode_weights" not in result.history[0]  # unknown for a file


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sampler": "hmc"}, "sampler"),
        ({"num_walkers": 1}, "num_walkers"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"validation_samples": 1}, "validation_samples"),
        ({"seed": 2**32 + 5}, r"seed.*\[0, 2\*\*32\), got 4294967301"),
    ],
)
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig().with_settings(**changes)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match=r"objective 'pcd'.*\['epochs'\]"):
        TrainConfig().with_settings(epochs=3)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


@pytest.mark.parametrize("objective", ["pcd", "cd", "short-run", "coopflow", "nce", "dsm", "ssm"])
def test_numpy_scalars_from_a_sweep_are_stored_as_python_numbers(objective):
    """``for n in np.arange(...)`` gives np.int64 settings; they used to pass the checks and
    then fail in ``json.dumps`` when the run directory was written, after the training."""
    config = TrainConfig(objective)
    numbers = {**config.to_dict(), **config.objective.to_dict()}
    as_numpy = {
        name: np.float32(value) if isinstance(value, float) else np.int64(value)
        for name, value in numbers.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    swept = config.with_settings(**as_numpy)
    stored = {**swept.to_dict(), **swept.objective.to_dict()}
    numpy_left = {k: type(v) for k, v in stored.items() if isinstance(v, np.generic)}
    assert not numpy_left
    assert TrainConfig.from_dict(json.loads(json.dumps(swept.to_dict()))) == swept
    assert swept.num_epochs == config.num_epochs and type(swept.num_epochs) is int


def test_config_reads_settings_written_before_objectives():
    """A run directory of the previous release (flat sampler settings) still resumes."""
    legacy = {**TrainConfig().to_dict(), "sampler": "ula", "num_walkers": 64, "l2_penalty": 0.1}
    del legacy["objective"]
    config = TrainConfig.from_dict(legacy)
    assert config.objective == PCD(sampler="ula", num_walkers=64, l2_penalty=0.1)


# ---------------------------------------------------------------- metrics and the saved model


def test_evaluate_reports_2d_metrics(ula_run):
    metrics = evaluate(ula_run, num_chain_steps=10)
    assert metrics["true_mode_weights"] == pytest.approx([1 / 3, 2 / 3])
    assert sum(metrics["mode_weights"]) == pytest.approx(1.0)
    assert metrics["top_right_weight"] == metrics["mode_weights"][1]
    assert metrics["median_sq_log_density_error"] >= 0
    assert metrics["negatives_max_rhat"] >= 0.99
    assert metrics["negatives_num_chains"] == 64
    assert "final_loss" in metrics and "final_flow_loss" not in metrics  # ULA: no flow
    assert metrics["negatives_num_draws"] >= 10


def test_load_energy_is_total_energy(tmp_path):
    energy = MLPEnergy(2, width=8, depth=1, key=jax.random.key(0))
    # Move the zero-initialised last layer so E is not identically 0.
    energy = eqx.tree_at(lambda e: e.mlp.layers[-1].bias, energy, jnp.array([0.7]))
    energy = eqx.tree_at(
        lambda e: e.mlp.layers[-1].weight, energy, jnp.linspace(-1.0, 1.0, 8)[None]
    )
    save_model(tmp_path, energy, 1.5)
    total_energy = load_energy(tmp_path)
    x = jnp.array([[0.3, -0.4], [1.0, 2.0], [0.0, 0.0]])
    values = total_energy(x)
    assert values.shape == (3,)
    # By hand at x = (0.3, -0.4): E(x) + |x|²/(2σ²) + d log σ + (d/2) log 2π.
    point = x[0]
    hidden = jax.nn.silu(energy.mlp.layers[0].weight @ point + energy.mlp.layers[0].bias)
    by_hand = float(jnp.linspace(-1.0, 1.0, 8) @ hidden + 0.7) + (
        0.25 / (2 * 1.5**2) + 2 * math.log(1.5) + math.log(2 * math.pi)
    )
    assert float(values[0]) == pytest.approx(by_hand, rel=1e-5)
    assert float(values[0]) == pytest.approx(
        float(energy(point) - base_log_prob(point, 1.5)), rel=1e-6
    )
    assert float(total_energy(x[0])) == float(values[0])  # one point (d,) gives a scalar
    with pytest.raises(ValueError, match=r"shape \(2,\) or points of shape \(n, 2\)"):
        total_energy(jnp.zeros((2, 3)))
    with pytest.raises(FileNotFoundError, match="trained model"):
        load_energy(tmp_path / "nothing")


def _run_under_x64(script: str) -> None:
    """Run ``script`` in a fresh interpreter with x64 on, as after ``numpyro.enable_x64()``.

    A fresh interpreter, as a user's x64 is set for the whole process (``numpyro.enable_x64()``
    or ``JAX_ENABLE_X64``); JAX documents its x64 context manager as unsafe with its caches.
    """
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_float32_model_loads_under_x64(tmp_path):
    # NumPyro users often call numpyro.enable_x64(); the saved arrays are float32. Loading used
    # to fail: "changed dtype from float64 in `like` to float32 on disk", blamed on the file.
    energy = MLPEnergy(2, width=8, depth=1, key=jax.random.key(0))
    energy = eqx.tree_at(lambda e: e.mlp.layers[-1].bias, energy, jnp.array([0.7]))
    flow = default_flow(jax.random.key(1), 2, loc=0.0, scale=1.5)
    save_model(tmp_path, energy, 1.5, flow=flow)
    x = np.array([[0.3, -0.4], [1.0, 2.0]])
    expected = np.asarray(load_energy(tmp_path)(x))
    expected_log_q = np.asarray(flow.log_prob(jnp.asarray(x, jnp.float32)))
    np.savez(tmp_path / "expected.npz", x=x, energy=expected, log_q=expected_log_q)
    _run_under_x64(f"""
import equinox as eqx, jax, jax.numpy as jnp, numpy as np
from numpyro_ebm.training import load_energy, load_model
out = {str(tmp_path)!r}
expected = np.load(out + "/expected.npz")
model = load_model(out)
dtypes = {{leaf.dtype for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_array))}}
assert dtypes == {{jnp.dtype("float64")}}, dtypes
values = load_energy(out)(expected["x"])
assert values.dtype == jnp.float64, values.dtype
np.testing.assert_allclose(values, expected["energy"], rtol=1e-6)
log_q = model.flow.log_prob(jnp.asarray(expected["x"]))
np.testing.assert_allclose(log_q, expected["log_q"], rtol=1e-5)
""")


def test_a_training_checkpoint_resumes_only_in_its_own_precision(tmp_path):
    # A resumed run must continue as it began: no silent cast, and the message names the cause.
    path = save_checkpoint(tmp_path / "step.eqx", {"w": jnp.ones(3, jnp.float32)})
    _run_under_x64(f"""
import jax.numpy as jnp, pytest
from numpyro_ebm.training.checkpoint import load_checkpoint
like = {{"w": jnp.zeros(3)}}
with pytest.raises(ValueError, match="another precision than jax_enable_x64's now"):
    load_checkpoint({str(path)!r}, like)
assert load_checkpoint({str(path)!r}, like, cast_floats=True)["w"].dtype == jnp.float64
""")


def test_save_and_load_model_with_flow(tmp_path, flowmc_run):
    trainer = flowmc_run.trainer
    save_model(
        tmp_path,
        flowmc_run.energy,
        trainer.base_scale,
        flow=flowmc_run.flow,
        negatives=trainer.negatives(flowmc_run.state),
    )
    model = load_model(tmp_path)
    x = jnp.array([[1.5, 1.5], [-1.5, -1.5]])
    np.testing.assert_array_equal(model.flow.log_prob(x), flowmc_run.flow.log_prob(x))
    # The same parameters through another compiled path: equal to float32 rounding (a wrong or
    # stale parameter would move the energy by far more).
    np.testing.assert_allclose(
        load_energy(tmp_path)(x), trainer.total_energy_fn(flowmc_run.state)(x), rtol=1e-6
    )
    assert model.negatives.shape == (TINY["num_walkers"], 2)


def test_two_modes_dataset_is_the_method_one():
    ds = get_dataset("two-modes-2to1")
    np.testing.assert_allclose(ds.mode_weights, [1 / 3, 2 / 3])


def test_nt_latent_map_is_the_flow():
    # Change of variables: log q(T(u)) = log N(u; 0, I) - log|det ∂T/∂u|, so the latent
    # potential U(T(u)) - log|det ∂T/∂u| is the pull-back of exp(-U) (NT-EBM of [A]).
    from flowjax.distributions import StandardNormal

    from numpyro_ebm.flows import default_flow
    from numpyro_ebm.training.negatives.neural_transport import _pull_back, _push_forward

    flow = default_flow(jax.random.key(0), 2, loc=jnp.array([0.5, -1.0]), scale=2.0)
    # Perturb every array so the coupling layers are far from the identity.
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    flow = eqx.combine(jax.tree.unflatten(treedef, leaves), static)
    latent = jax.random.normal(jax.random.key(2), (5, 2))
    position, log_det = jax.vmap(lambda u: _push_forward(flow, u))(latent)
    expected = StandardNormal((2,)).log_prob(latent) - log_det
    np.testing.assert_allclose(flow.log_prob(position), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        jax.vmap(lambda x: _pull_back(flow, x))(position), latent, rtol=1e-4, atol=1e-4
    )


def test_evaluate_high_dimension_uses_a_flowmc_run():
    config = TrainConfig().with_settings(**{**MINI, "num_epochs": 1}, sampler="ula")
    result = train("gmm-16", config, progress_bar=False)
    metrics = evaluate(result, num_chain_steps=8, num_flowmc_samples=8)
    assert len(metrics["mode_weights"]) == 4
    assert sum(metrics["mode_weights"]) == pytest.approx(1.0)
    assert "median_sq_log_density_error" not in metrics  # a grid exists only in 2-D
    assert "top_right_weight" not in metrics
    assert metrics["negatives_num_chains"] == MINI["num_walkers"]


class _UndefinedOnHalf(eqx.Module):
    """A user's energy with a log that is NaN for x₀ < -1: undefined where data lie."""

    weight: jax.Array

    def __call__(self, x):
        return self.weight * jnp.log(x[0] + 1.0) ** 2 + 0.5 * jnp.sum(x**2)


def test_a_nan_loss_names_a_network_undefined_on_the_data():
    # Such a network was told only that its energy was running away (an L2 penalty, a smaller
    # learning rate), which cannot help.
    config = TrainConfig().with_settings(**{**MINI, "steps_per_epoch": 20}, sampler="ula")
    energy = _UndefinedOnHalf(jnp.array(0.1))
    points = np.random.default_rng(0).normal(size=(256, 2))  # 16 % with x₀ < -1
    with pytest.warns(RuntimeWarning, match=r"loss was NaN at \d+ of 20 steps.*undefined"):
        Trainer(points, config, energy=energy).fit(progress_bar=False)


def test_a_runaway_energy_gives_one_warning():
    # A learning rate of 10 makes the contrastive loss, unbounded below, run away at once.
    config = TrainConfig().with_settings(
        **{**MINI, "num_epochs": 2, "steps_per_epoch": 20}, sampler="ula", learning_rate=10.0
    )
    with pytest.warns(RuntimeWarning, match="running away") as caught:
        Trainer("two-modes-2to1", config).fit(progress_bar=False)
    assert len([w for w in caught if "running away" in str(w.message)]) == 1
    # The control: the same run at a sane rate is quiet.
    quiet = TrainConfig().with_settings(**{**MINI, "steps_per_epoch": 20}, sampler="ula")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        Trainer("two-modes-2to1", quiet).fit(progress_bar=False)
