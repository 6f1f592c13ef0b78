"""Energy networks: check_energy, ConvEnergy, a user's own module in training, saving and CLI."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _objectives import TRAINER_SETTINGS
from _trees import leaves_equal

from numpyro_ebm.cli import main
from numpyro_ebm.energies import MLPEnergy
from numpyro_ebm.networks import ConvEnergy, check_energy
from numpyro_ebm.training import (
    TrainConfig,
    Trainer,
    evaluate_run,
    load_energy,
    load_model,
    save_model,
)
from numpyro_ebm.training.energy_specs import energy_from_spec, energy_spec
from numpyro_ebm.training.run_files import read_model_settings

# The trainer's smallest run with ula negatives (as test_training.py's MINI).
MINI = TRAINER_SETTINGS | dict(steps_per_epoch=4, num_walkers=16, learning_rate=1e-2)


class GaussianEnergy(eqx.Module):
    """A user's energy: ``½ Σ exp(log_precision) (x - mean)²``."""

    mean: jax.Array
    log_precision: jax.Array

    def __init__(self, dim, *, key):
        self.mean = 0.1 * jax.random.normal(key, (dim,))
        self.log_precision = jnp.zeros(dim)

    def __call__(self, x):
        return 0.5 * jnp.sum(jnp.exp(self.log_precision) * (x - self.mean) ** 2)


class VectorEnergy(eqx.Module):
    weight: jax.Array

    def __call__(self, x):
        return self.weight * x


class IntegerEnergy(eqx.Module):
    weight: jax.Array

    def __call__(self, x):
        return jnp.sum(x > self.weight).astype(jnp.int32)


class PairEnergy(eqx.Module):
    weight: jax.Array

    def __call__(self, x):
        return x @ self.weight, x


class NoArrays(eqx.Module):
    power: int = 2

    def __call__(self, x):
        return jnp.sum(x**self.power)


class NotCallable(eqx.Module):
    weight: jax.Array


def _perturbed(energy, seed=1):
    """``energy`` with every float array moved, so that no saved energy is identically 0."""
    params, static = eqx.partition(energy, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved = [
        leaf + 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys, strict=True)
    ]
    return eqx.combine(jax.tree.unflatten(tree, moved), static)


def _data_file(tmp_path, dim, n=256):
    path = tmp_path / f"points{dim}.npy"
    np.save(path, np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32))
    return path


# ---------------------------------------------------------------- check_energy


def test_check_energy_accepts_builtins_and_a_user_module():
    key = jax.random.key(0)
    for energy, dim in [
        (MLPEnergy(3, width=4, depth=1, key=key), 3),
        (ConvEnergy((4, 4), key=key), 16),
        (ConvEnergy((2, 3, 3), channels=(4,), key=key), 18),
        (GaussianEnergy(5, key=key), 5),
    ]:
        assert check_energy(energy, dim) is energy


@pytest.mark.parametrize(
    ("energy", "error", "match"),
    [
        (lambda x: jnp.sum(x), TypeError, "equinox Module .* got function"),
        (NotCallable(jnp.ones(3)), TypeError, "callable.* got NotCallable"),
        (NoArrays(), ValueError, "floating-point array to train, got NoArrays with none"),
        (VectorEnergy(jnp.ones(3)), ValueError, r"scalar \(shape \(\)\).* shape \(3,\)"),
        (IntegerEnergy(jnp.ones(3)), TypeError, "return a float, got IntegerEnergy.*int32"),
        (PairEnergy(jnp.ones(3)), TypeError, "one scalar array, got PairEnergy returning tuple"),
        (GaussianEnergy(4, key=jax.random.key(0)), ValueError, r"shape \(3,\), got Gaussian"),
    ],
)
def test_check_energy_rejects_bad_modules_naming_expected_and_given(energy, error, match):
    with pytest.raises(error, match=match):
        check_energy(energy, 3)


def test_check_energy_chains_the_modules_own_error():
    with pytest.raises(ValueError, match=r"\(3,\).*MLPEnergy.*raised ValueError") as info:
        check_energy(MLPEnergy(2, key=jax.random.key(0)), 3)
    assert isinstance(info.value.__cause__, ValueError)
    assert "use jax.vmap" in str(info.value.__cause__)


# ---------------------------------------------------------------- ConvEnergy


def test_conv_energy_starts_at_zero_and_has_the_stated_size():
    energy = ConvEnergy((8, 8), key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 64))
    np.testing.assert_array_equal(jax.vmap(energy)(x), np.zeros(5))
    # 3x3 convs 1 -> 16 -> 32 (the second halves 8x8 to 4x4), then a linear head: ~5.3k.
    num_params = sum(p.size for p in jax.tree.leaves(eqx.filter(energy, eqx.is_array)))
    assert num_params == (9 * 16 + 16) + (9 * 16 * 32 + 32) + (32 * 4 * 4 + 1)


def test_conv_energy_gradient_agrees_with_finite_differences():
    energy = _perturbed(ConvEnergy((2, 5, 5), channels=(3, 4), key=jax.random.key(0)))
    x = jax.random.normal(jax.random.key(2), (50,))
    value, grad = jax.value_and_grad(energy)(x)
    assert value.shape == () and bool(jnp.isfinite(value))
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
    for seed in range(3):
        direction = jax.random.normal(jax.random.key(10 + seed), (50,))
        # Central differences: O(eps²) truncation, ~1e-7/eps float32 rounding; 2% tolerance.
        eps = 1e-2
        numeric = (energy(x + eps * direction) - energy(x - eps * direction)) / (2 * eps)
        assert float(numeric) == pytest.approx(float(grad @ direction), rel=2e-2, abs=1e-4)


def test_conv_energy_clear_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"image_shape.*length \(2, 3\).*got \(8,\)"):
        ConvEnergy((8,), key=key)
    with pytest.raises(ValueError, match=r"channels.*non-empty.*got \(\)"):
        ConvEnergy((8, 8), channels=(), key=key)
    with pytest.raises(ValueError, match=r"shape \(64,\).*got shape \(63,\)"):
        ConvEnergy((8, 8), key=key)(jnp.zeros(63))


# ---------------------------------------------------------------- training


def test_a_user_module_trains_and_is_recorded_in_the_settings():
    energy = GaussianEnergy(2, key=jax.random.key(3))
    config = TrainConfig().with_settings(**MINI, sampler="ula", ema_decay=0.0)
    trainer = Trainer("two-modes-2to1", config, energy=energy)
    result = trainer.fit(progress_bar=False)
    assert trainer.config.energy == "custom" and config.energy == "mlp"
    assert isinstance(result.energy, GaussianEnergy)
    assert all(np.isfinite(entry["loss"]) for entry in result.history)
    # The data's spread (two modes at ±1.5·(1, 1)) is wider than the start: parameters move.
    assert float(jnp.abs(result.energy.log_precision - energy.log_precision).max()) > 1e-3
    settings = trainer.settings()
    assert settings["config"]["energy"] == "custom"
    assert settings["energy"] == {
        "type": "custom",
        "class": f"{__name__}.GaussianEnergy",
        "num_parameters": 4,
    }


def test_built_in_conv_energy_from_the_config(tmp_path):
    trainer = Trainer(_data_file(tmp_path, 16), TrainConfig(energy="conv", **TRAINER_SETTINGS))
    assert trainer.settings()["energy"] == {
        "type": "conv",
        "image_shape": [4, 4],
        "channels": [16, 32],
    }
    with pytest.raises(ValueError, match=r"square images.*got d = 12"):
        Trainer(_data_file(tmp_path, 12), TrainConfig(energy="conv", **TRAINER_SETTINGS))
    with pytest.raises(ValueError, match=r"`energy` among \('mlp', 'conv', 'custom'\).*'resnet'"):
        TrainConfig(energy="resnet")
    with pytest.raises(ValueError, match=r"`energy=`.*'custom'.*got none"):
        Trainer("two-modes-2to1", TrainConfig(energy="custom", **TRAINER_SETTINGS))
    with pytest.raises(ValueError, match=r"shape \(2,\), got MLPEnergy"):
        Trainer("two-modes-2to1", energy=MLPEnergy(3, key=jax.random.key(0)))


def test_resume_with_a_custom_energy_is_exact(tmp_path):
    config = TrainConfig().with_settings(**MINI, sampler="ula")
    energy = GaussianEnergy(2, key=jax.random.key(0))
    full = Trainer("two-modes-2to1", config, energy=energy).fit(
        out_dir=tmp_path / "full", progress_bar=False
    )
    Trainer("two-modes-2to1", config, energy=energy).fit(
        out_dir=tmp_path / "split", progress_bar=False, num_epochs=1
    )
    # Resumed by a fresh trainer with a fresh module of the same structure.
    resumed = Trainer("two-modes-2to1", config, energy=GaussianEnergy(2, key=jax.random.key(9)))
    resumed = resumed.fit(out_dir=tmp_path / "split", resume=True, progress_bar=False)
    assert leaves_equal(full.state, resumed.state)

    def without_times(history):  # as JSON, where NaN (a diverged metric) equals NaN
        return json.dumps([{k: v for k, v in e.items() if k != "time_s"} for e in history])

    assert without_times(resumed.history) == without_times(full.history)
    saved = json.loads((tmp_path / "split" / "settings.json").read_text())
    assert saved["config"]["energy"] == "custom"
    # Another network, or none, cannot resume it.
    with pytest.raises(ValueError, match=r"energy: saved .*GaussianEnergy.*given .*'mlp'"):
        Trainer("two-modes-2to1", config.replace(energy="mlp")).fit(
            out_dir=tmp_path / "split", resume=True, progress_bar=False
        )
    assert main(["train", "two-modes-2to1", "--out", str(tmp_path / "split"), "--resume"]) == 2


def test_a_built_in_network_given_as_a_module_resumes_from_the_command_line(tmp_path):
    # A user's MLPEnergy was recorded as "custom": the command line then refused to resume or
    # sample the run although settings.json could rebuild it.
    config = TrainConfig().with_settings(**MINI, sampler="ula")
    energy = MLPEnergy(2, width=12, depth=1, key=jax.random.key(0))
    trainer = Trainer("two-modes-2to1", config, energy=energy)
    trainer.fit(out_dir=tmp_path / "run", progress_bar=False, num_epochs=1)
    saved = json.loads((tmp_path / "run" / "settings.json").read_text())["config"]
    assert (saved["energy"], saved["energy_width"], saved["energy_depth"]) == ("mlp", 12, 1)
    assert main(["train", "two-modes-2to1", "--out", str(tmp_path / "run"), "--resume"]) == 0
    # The control: channels the setting "conv" does not build stay a network of one's own.
    mine = ConvEnergy((2, 2), channels=(3,), key=jax.random.key(0))
    assert Trainer(np.ones((40, 4)), config, energy=mine).config.energy == "custom"
    default = ConvEnergy((2, 2), key=jax.random.key(0))
    assert Trainer(np.ones((40, 4)), config, energy=default).config.energy == "conv"


# ---------------------------------------------------------------- saving and loading


@pytest.mark.parametrize(
    ("energy", "dim"),
    [
        (MLPEnergy(3, width=8, depth=2, key=jax.random.key(0)), 3),
        (ConvEnergy((4, 4), channels=(4, 8), key=jax.random.key(0)), 16),
    ],
)
def test_built_in_energies_round_trip_without_a_template(tmp_path, energy, dim):
    energy = _perturbed(energy)
    save_model(tmp_path, energy, 1.5)
    x = jax.random.normal(jax.random.key(4), (6, dim))
    loaded = load_model(tmp_path).energy
    assert type(loaded) is type(energy)
    np.testing.assert_array_equal(jax.vmap(loaded)(x), jax.vmap(energy)(x))
    assert read_model_settings(tmp_path / "model.json")["energy"] == energy_spec(energy)


def test_custom_energy_round_trips_with_a_template_and_is_a_clear_error_without(tmp_path):
    energy = _perturbed(GaussianEnergy(3, key=jax.random.key(0)))
    save_model(tmp_path, energy, 2.0, dim=3)
    template = GaussianEnergy(3, key=jax.random.key(5))
    x = jax.random.normal(jax.random.key(4), (6, 3))
    loaded = load_model(tmp_path, energy=template).energy
    np.testing.assert_array_equal(jax.vmap(loaded)(x), jax.vmap(energy)(x))
    np.testing.assert_array_equal(
        load_energy(tmp_path, template)(x), load_energy(tmp_path, loaded)(x)
    )
    with pytest.raises(ValueError, match=r"model.json: expected `energy=`.*\.GaussianEnergy"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match=r"model.json: expected `energy` to accept .*\(3,\)"):
        load_model(tmp_path, energy=GaussianEnergy(4, key=jax.random.key(0)))
    with pytest.raises(ValueError, match="template of the saved structure"):
        load_model(tmp_path, energy=MLPEnergy(3, key=jax.random.key(0)))
    with pytest.raises(ValueError, match=r"expected `dim`.*GaussianEnergy"):
        save_model(tmp_path / "other", energy, 2.0)
    with pytest.raises(TypeError, match="equinox Module"):
        save_model(tmp_path / "other", jnp.sum, 2.0, dim=3)


class NumpyEnergy(eqx.Module):
    """A user's energy whose weights come from ``np.random``: float64 NumPy leaves."""

    weights: np.ndarray

    def __init__(self, dim, seed=0):
        self.weights = np.random.default_rng(seed).normal(size=dim)

    def __call__(self, x):
        return jnp.sum(self.weights * x**2)


def test_an_energy_with_numpy_weights_trains_saves_and_loads_into_a_fresh_instance(tmp_path):
    # Regression: training turned the float64 NumPy weights into float32 JAX arrays, and the
    # checkpoint then did not load into a fresh instance ("changed dtype from float64").
    checked = check_energy(NumpyEnergy(3), 3)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(checked))
    np.testing.assert_allclose(checked.weights, NumpyEnergy(3).weights, rtol=1e-6)
    save_model(tmp_path, _perturbed(checked), 2.0, dim=3)
    x = jax.random.normal(jax.random.key(4), (6, 3))
    loaded = load_model(tmp_path, energy=NumpyEnergy(3, seed=5)).energy
    np.testing.assert_array_equal(jax.vmap(loaded)(x), jax.vmap(_perturbed(checked))(x))


def test_a_custom_energy_saved_by_a_script_loads_where_its_class_is_imported(tmp_path):
    # A class defined in a script run directly is saved as `__main__.Name`; another script that
    # imports it sees `module.Name`. It was refused as "not the saved structure".
    energy = _perturbed(GaussianEnergy(3, key=jax.random.key(0)))
    save_model(tmp_path, energy, 2.0, dim=3)
    path = tmp_path / "model.json"
    settings = json.loads(path.read_text())
    settings["energy"]["class"] = "__main__.GaussianEnergy"
    path.write_text(json.dumps(settings))
    x = jax.random.normal(jax.random.key(4), (6, 3))
    loaded = load_model(tmp_path, energy=GaussianEnergy(3, key=jax.random.key(5))).energy
    np.testing.assert_array_equal(jax.vmap(loaded)(x), jax.vmap(energy)(x))
    settings["energy"]["class"] = "__main__.OtherEnergy"  # the control: another class
    path.write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="template of the saved structure"):
        load_model(tmp_path, energy=GaussianEnergy(3, key=jax.random.key(5)))


def test_a_custom_energy_is_evaluated_from_python_and_the_cli_says_how(tmp_path, capsys):
    # The command line cannot rebuild a network of the user's: it named `energy=`, a Python
    # argument no command takes. Python's evaluate_run takes the template.
    energy = _perturbed(GaussianEnergy(2, key=jax.random.key(0)))
    save_model(tmp_path, energy, 2.0, dim=2)
    for command in ("evaluate", "sample"):
        extra = ["--data", "two-modes-2to1"] if command == "evaluate" else ["--num-samples", "5"]
        assert main([command, str(tmp_path), *extra]) == 2
        error = capsys.readouterr().err
        assert "GaussianEnergy" in error and f"{command}_run(" in error, error
    metrics = evaluate_run(
        tmp_path, "two-modes-2to1", num_samples=256, energy=GaussianEnergy(2, key=jax.random.key(1))
    )
    assert math.isfinite(metrics["heldout_log_likelihood"]) and metrics["kl_divergence"] > 0


def test_model_json_of_an_earlier_release_still_loads(tmp_path):
    energy = _perturbed(MLPEnergy(2, width=8, depth=1, key=jax.random.key(0)))
    save_model(tmp_path, energy, 1.0)
    path = tmp_path / "model.json"
    settings = json.loads(path.read_text())
    del settings["energy"]
    path.write_text(json.dumps({**settings, "energy_width": 8, "energy_depth": 1}))
    x = jnp.array([[0.3, -0.4], [1.0, 2.0]])
    np.testing.assert_array_equal(jax.vmap(load_model(tmp_path).energy)(x), jax.vmap(energy)(x))
    path.write_text(json.dumps({**settings, "energy": {"type": "conv", "image_shape": [2]}}))
    with pytest.raises(ValueError, match=r"model.json: key 'energy': missing key 'channels'"):
        load_model(tmp_path)


def test_energy_from_spec_checks_the_pixels():
    with pytest.raises(ValueError, match=r"image_shape of 16 pixels, got \[3, 3\]"):
        energy_from_spec({"type": "conv", "image_shape": [3, 3], "channels": [2]}, 16)


# ---------------------------------------------------------------- command line


def test_cli_trains_a_conv_energy_on_64_pixel_images(tmp_path):
    out = tmp_path / "run"
    argv = ["train", str(_data_file(tmp_path, 64, n=512)), "--out", str(out), "--no-progress"]
    assert main([*argv, "--fast", "--energy", "conv", "--epochs", "1", "--sampler", "ula"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["config"]["energy"] == "conv"
    assert report["settings"]["energy"]["type"] == "conv"
    model = load_model(out)
    assert isinstance(model.energy, ConvEnergy) and model.energy.image_shape == (8, 8)
    assert model.settings["energy"] == {"type": "conv", "image_shape": [8, 8], "channels": [16, 32]}
