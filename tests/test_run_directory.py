"""What a run directory keeps of a run trained on a user's own data, and how it resumes.

A model trained on raw, unstandardised points (an array, large offsets, fine resolution) is
saved with its preprocessing and read back in raw units; resuming refuses other data behind
the same path, and a run killed mid-epoch resumes to the history of an uninterrupted one.
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _objectives import assert_same_run
from numpyro.infer.util import log_density

import numpyro_ebm.training.trainer as trainer_module
from numpyro_ebm.energies import MLPEnergy, TiltedEnergy, energy_factor
from numpyro_ebm.preprocessing import Preprocessing
from numpyro_ebm.training import (
    TrainConfig,
    Trainer,
    load_energy,
    load_model,
    save_model,
    save_result,
    train,
)
from numpyro_ebm.training.checkpoint import checkpoint_paths

# Raw points far from the origin on two very different scales.
OFFSET, SPREAD = np.array([1e3, -50.0]), np.array([5.0, 0.01])
SMALL = dict(num_epochs=1, steps_per_epoch=4, batch_size=16, energy_width=8, energy_depth=1)


def _raw_points(n=256, seed=0):
    return OFFSET + SPREAD * np.random.default_rng(seed).normal(size=(n, 2))


def _energy_with_slope(dim, seed=0):
    """A small MLP energy whose last layer is not zero (E is not identically 0)."""
    energy = MLPEnergy(dim, width=8, depth=1, key=jax.random.key(seed))
    layer = energy.mlp.layers[-1]
    weight = jnp.linspace(-1.0, 1.0, layer.weight.size).reshape(layer.weight.shape)
    return eqx.tree_at(lambda e: e.mlp.layers[-1].weight, energy, weight)


@pytest.fixture(scope="module")
def raw_run():
    """A tiny ULA run on an array of raw points."""
    config = TrainConfig("pcd", **SMALL).with_settings(sampler="ula", num_walkers=16)
    return train(_raw_points(), config, progress_bar=False)


def test_an_array_of_points_trains_as_a_dataset_named_array(raw_run):
    trainer = raw_run.trainer
    assert trainer.dataset_spec == "array"
    np.testing.assert_allclose(trainer.preprocessing.shift, OFFSET, atol=1.0)
    assert trainer.preprocessing.scale[1] == pytest.approx(0.01, rel=0.2)
    with pytest.raises(TypeError, match=r"an array of points \(n, d\).*got list"):
        train([[1.0, 2.0]], TrainConfig("pcd", **SMALL), progress_bar=False)


def test_save_result_keeps_the_preprocessing_that_load_energy_needs(raw_run, tmp_path):
    trainer, points = raw_run.trainer, _raw_points(8, seed=1)
    prep = trainer.preprocessing
    expected = trainer.total_energy_fn(raw_run.state)(prep.transform(points))
    expected = np.asarray(expected) - prep.log_det_jacobian
    energy = load_energy(save_result(tmp_path / "run", raw_run))
    np.testing.assert_allclose(energy(points), expected, rtol=1e-5)
    assert load_model(tmp_path / "run").settings["dataset"] == "array"
    # Control: saved without its preprocessing, the model reads raw points as standardised
    # ones, 10³ away from the data, and is off by orders of magnitude.
    save_model(tmp_path / "bare", raw_run.energy, trainer.base_scale, dim=2)
    assert np.min(np.abs(load_energy(tmp_path / "bare")(points) - expected)) > 1e3


def test_load_energy_standardises_large_finely_resolved_units_in_float64(tmp_path):
    shift, scale = np.array([1e5, 0.0]), np.array([0.01, 1.0])
    energy = _energy_with_slope(2)
    save_model(tmp_path, energy, 1.5, preprocessing=Preprocessing(shift, scale))
    z = np.stack([np.linspace(-2.0, 2.0, 5), np.zeros(5)], axis=1)
    x = shift + scale * z  # 1e5 ± 0.02: below float32's resolution of 1e5 (0.0078) x 3
    tilted = jax.vmap(TiltedEnergy(energy, 1.5))
    expected = np.asarray(tilted(jnp.asarray(z))) + np.sum(np.log(scale))
    np.testing.assert_allclose(load_energy(tmp_path)(x), expected, rtol=1e-5)
    # Traced points (inside jit or a NumPyro model) go through the same map, in their dtype.
    assert jax.jit(load_energy(tmp_path))(jnp.zeros((3, 2))).shape == (3,)
    # Control: the same map in float32 puts these points up to 0.3 standard units off.
    z32 = (x.astype(np.float32) - shift.astype(np.float32)) / scale.astype(np.float32)
    assert np.max(np.abs(z32 - z)) > 0.1


def test_a_loaded_energy_is_a_prior_factor_in_raw_units(raw_run, tmp_path):
    energy = load_energy(save_result(tmp_path, raw_run))
    point = _raw_points(1, seed=2)[0]

    def model():
        energy_factor("prior", energy, numpyro.sample("x", dist.ImproperUniform(
            dist.constraints.real_vector, (), (2,))))  # fmt: skip

    log_joint = jax.jit(lambda x: log_density(model, (), {}, {"x": x})[0])
    assert float(log_joint(jnp.asarray(point))) == pytest.approx(
        -float(energy(point[None])[0]), rel=1e-4
    )


def test_save_model_refuses_a_preprocessing_of_another_dimension(tmp_path):
    with pytest.raises(ValueError, match=r"preprocessing of points of dimension 2, got .* 3"):
        save_model(tmp_path, _energy_with_slope(2), 1.0, preprocessing=Preprocessing.identity(3))


def test_training_data_that_does_not_vary_is_named():
    with pytest.raises(ValueError, match="all the same point"):
        Trainer(np.full((50, 2), 0.5), TrainConfig("pcd", **SMALL))


@pytest.mark.parametrize("preprocess", ["auto", "none"])
def test_a_constant_column_is_named(preprocess):
    # A column fixed at 2.5 beside two that vary: the density had no width along it, and the
    # validation log-likelihood climbed every epoch (-4.1, -1.7, ..., +1.3), each a new best.
    points = np.random.default_rng(0).normal(size=(200, 3)) * [50.0, 0.01, 1.0] + [1e3, 0, 0]
    points[:, 1] = 2.5
    with pytest.raises(ValueError, match=r"column\(s\) 1 constant over its \d+ training points"):
        Trainer(points, TrainConfig("pcd", **SMALL, preprocess=preprocess))
    points[:, 1] += np.random.default_rng(1).normal(size=200)  # control: it varies
    Trainer(points, TrainConfig("pcd", **SMALL, preprocess=preprocess))


def test_a_column_of_a_few_integer_values_is_warned_of():
    # A 0/1 column (a sex indicator) among continuous ones: the validation log-likelihood went
    # -7.2, -7.1, -5.9, -4.6 and on rising, each a new best, with no warning.
    points = np.random.default_rng(0).normal(size=(200, 3)) * [50.0, 1.0, 1.0] + [1e3, 0, 0]
    points[:, 1] = np.random.default_rng(1).integers(0, 2, 200)
    with pytest.warns(UserWarning, match=r"column\(s\) 1 \(2 values\) of .* few integer values"):
        Trainer(points, TrainConfig("pcd", **SMALL))
    points[:, 1] += np.random.default_rng(2).uniform(size=200)  # control: dequantised by hand
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(points, TrainConfig("pcd", **SMALL))


def test_resume_refuses_other_data_behind_the_same_path(tmp_path):
    path, out = tmp_path / "points.npy", tmp_path / "run"
    config = TrainConfig("pcd", **SMALL).with_settings(sampler="ula", num_walkers=16)
    np.save(path, _raw_points())
    Trainer(path, config).fit(out_dir=out, progress_bar=False)
    # Control: the same data resumes (to two epochs).
    Trainer(path, config).fit(out_dir=out, resume=True, progress_bar=False, num_epochs=2)
    np.save(path, 10.0 * _raw_points())
    with pytest.raises(ValueError, match=r"preprocessing: saved and given differ \(other data"):
        Trainer(path, config).fit(out_dir=out, resume=True, progress_bar=False, num_epochs=3)
    assert [step for step, _ in checkpoint_paths(out / "checkpoints")] == [4, 8]


def test_resume_accepts_the_same_file_by_another_path_and_refuses_another_name(
    tmp_path, monkeypatch
):
    # A job requeued with an absolute path, or run from another directory: refused before
    # ("dataset: saved 'points.npy', given '/.../points.npy'"), and the checkpoints then lost.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    config = TrainConfig("pcd", **SMALL).with_settings(sampler="ula", num_walkers=16)
    np.save("points.npy", _raw_points())
    Trainer("points.npy", config).fit(out_dir=out, progress_bar=False)
    resumed = Trainer(str(tmp_path / "points.npy"), config).fit(
        out_dir=out, resume=True, progress_bar=False, num_epochs=2
    )
    assert len(resumed.history) == 2
    np.save("renamed.npy", _raw_points())  # control: another name is another dataset
    with pytest.raises(ValueError, match=r"dataset: saved '\S*points.npy', given 'renamed.npy'"):
        Trainer("renamed.npy", config).fit(out_dir=out, resume=True, progress_bar=False)


def test_resume_with_another_seed_names_the_seed_not_other_data(tmp_path):
    # The seed draws the validation split, hence σ and the preprocessing: the message used to
    # list them too and ask whether other data was behind the path.
    path, out = tmp_path / "points.npy", tmp_path / "run"
    config = TrainConfig("pcd", **SMALL).with_settings(sampler="ula", num_walkers=16)
    np.save(path, _raw_points())
    Trainer(path, config).fit(out_dir=out, progress_bar=False)
    with pytest.raises(ValueError, match="seed: saved 0, given 1") as caught:
        Trainer(path, config.replace(seed=1)).fit(out_dir=out, resume=True, progress_bar=False)
    assert "preprocessing" not in str(caught.value) and "base_scale" not in str(caught.value)


def test_a_run_directory_that_is_a_file_is_named(tmp_path):
    out = tmp_path / "run"
    out.write_text("not a directory")
    config = TrainConfig("pcd", **SMALL).with_settings(sampler="ula", num_walkers=16)
    with pytest.raises(NotADirectoryError, match="expected a run directory, got a file"):
        train(_raw_points(), config, out_dir=out, progress_bar=False)
    assert out.read_text() == "not a directory"


class _Killed(Exception):
    """Stands for the process being killed."""


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_history(tmp_path, monkeypatch):
    # 48 steps an epoch (negatives_rhat needs 40), a checkpoint every 24, 32 walkers.
    config = TrainConfig(
        "pcd", num_epochs=1, steps_per_epoch=48, checkpoint_every=24, batch_size=16,
        energy_width=8, energy_depth=1, num_data=256, grid_points=10,
    ).with_settings(sampler="ula", num_walkers=32)  # fmt: skip
    full = Trainer("two-modes-2to1", config).fit(out_dir=tmp_path / "full", progress_bar=False)
    assert "negatives_rhat" in full.history[0]

    save = trainer_module.save_training_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise _Killed

    def killed_at_step_24(out):
        with monkeypatch.context() as patch:
            patch.setattr(trainer_module, "save_training_checkpoint", save_then_die)
            with pytest.raises(_Killed):
                Trainer("two-modes-2to1", config).fit(out_dir=out, progress_bar=False)
        return Trainer("two-modes-2to1", config)

    resumed = killed_at_step_24(tmp_path / "split").fit(
        out_dir=tmp_path / "split", resume=True, progress_bar=False
    )
    assert_same_run(full, resumed)
    # Control: without the first half's traced negatives (the checkpoint's .paths.npy) the
    # resumed epoch's R̂ would rest on its 24 last steps, too few for one.
    trainer = killed_at_step_24(tmp_path / "lost")
    for kept in (tmp_path / "lost" / "checkpoints").glob("*.paths.npy"):
        kept.unlink()
    lost = trainer.fit(out_dir=tmp_path / "lost", resume=True, progress_bar=False)
    assert "negatives_rhat" not in lost.history[0]


def test_a_damaged_last_checkpoint_falls_back_to_the_one_before(tmp_path):
    # A checkpoint cut short blocked the resume although the one before it was intact.
    config = TrainConfig(
        "pcd", num_epochs=2, steps_per_epoch=4, batch_size=16, energy_width=8, energy_depth=1,
        num_data=256, grid_points=10,
    ).with_settings(sampler="ula", num_walkers=16)  # fmt: skip
    full = Trainer("two-modes-2to1", config).fit(out_dir=tmp_path, progress_bar=False)
    (_, before), (_, last) = checkpoint_paths(tmp_path / "checkpoints")
    last.write_bytes(last.read_bytes()[:100])  # a write cut short
    with pytest.warns(UserWarning, match=f"{last.name}.*resuming from .*{before.name}"):
        resumed = Trainer("two-modes-2to1", config).fit(
            out_dir=tmp_path, resume=True, progress_bar=False
        )
    assert_same_run(full, resumed)
    for _, path in checkpoint_paths(tmp_path / "checkpoints"):  # the control: none reads back
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="damaged"):
        Trainer("two-modes-2to1", config).fit(out_dir=tmp_path, resume=True, progress_bar=False)
