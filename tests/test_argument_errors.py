"""Mistaken arguments to the training side's entry points: clear errors, before any work.

Each case failed deep inside JAX, NumPy or pathlib (or after the work was done) before.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_ebm.energies import MLPEnergy
from numpyro_ebm.training import (
    TrainConfig,
    Trainer,
    evaluate_run,
    sample_energy,
    sample_run,
    save_model,
)
from numpyro_ebm.training.data import training_data


def _energy(x):
    return jnp.sum(x**2)


@pytest.mark.parametrize(
    ("args", "options", "match"),
    [
        (("2", 1.0), {}, "`dim` must be an integer >= 1, got '2'"),
        ((2, "1"), {}, "`base_scale` must be a positive finite number, got '1'"),
        ((2, None), {}, "`base_scale` must be a positive finite number, got None"),
        ((2, 1.0), {"num_chains": 0}, "`num_chains` must be an integer >= 2, got 0"),
        ((2, 1.0), {"num_chains": -3}, "`num_chains` must be an integer >= 2, got -3"),
        ((2, 1.0), {"init_positions": np.ones((4, 2), int)}, "init_positions of real numbers"),
    ],
)
def test_sample_energy_names_the_argument(args, options, match):
    with pytest.raises(ValueError, match=match):
        sample_energy(jax.random.key(0), _energy, *args, num_samples=2, **options)


def test_a_run_directory_that_cannot_be_written_loses_no_draws(tmp_path, monkeypatch):
    # The draws were made, then `mkdir` failed on a path that is a file: now it fails first.
    def must_not_sample(*args, **kwargs):
        raise AssertionError("sampled before checking the output directory")

    monkeypatch.setattr("numpyro_ebm.training.sampling.sample_energy", must_not_sample)
    save_model(tmp_path / "run", MLPEnergy(2, width=4, depth=1, key=jax.random.key(0)), 1.0)
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    with pytest.raises(FileExistsError):
        sample_run(tmp_path / "run", num_samples=2, num_chains=4, num_warmup=2, out_dir=blocked)
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2\*\*32\), got -1"):
        evaluate_run(tmp_path / "run", "two-modes-2to1", seed=-1)


def test_the_trainer_takes_a_train_config_and_a_boolean_resume(tmp_path):
    with pytest.raises(TypeError, match=r"expected a TrainConfig .* got dict"):
        Trainer("two-modes-2to1", {"num_epochs": 1})
    config = TrainConfig("pcd", num_epochs=1, steps_per_epoch=1, batch_size=8, num_data=64)
    trainer = Trainer("two-modes-2to1", config.with_settings(sampler="ula", num_walkers=8))
    # A string counted as True: "no" resumed an earlier run.
    with pytest.raises(ValueError, match="`resume` must be True or False, got 'no'"):
        trainer.fit(out_dir=tmp_path, resume="no", progress_bar=False)


def test_transposed_data_are_named():
    # train(x.T) trained a 100-dimensional model on 2 points without a word.
    points = np.random.default_rng(0).normal(size=(100, 2))
    with pytest.warns(UserWarning, match="2 training points of dimension 100.*transposed"):
        training_data(points.T, jax.random.key(0), 0, validation_fraction=0)


def test_estimators_and_checks_name_a_mistaken_argument(tmp_path):
    from flowjax.distributions import Normal
    from numpyro.infer import MCMC

    from numpyro_ebm import FlowMCKernel
    from numpyro_ebm.data_files import load_data
    from numpyro_ebm.diagnostics import from_numpyro
    from numpyro_ebm.health import check_run
    from numpyro_ebm.likelihood import heldout_log_likelihood, importance_log_normalizer
    from numpyro_ebm.plotting import plot_training_curves

    proposal = Normal(jnp.zeros(2))
    # A vector energy failed in a broadcast inside the estimator's jit.
    with pytest.raises(ValueError, match=r"return a scalar for one point of shape \(2,\)"):
        importance_log_normalizer(jax.random.key(0), lambda x: x**2, proposal, 64)
    with pytest.raises(TypeError, match=r"LogNormalizerEstimate .* got float 1.84"):
        heldout_log_likelihood(_energy, jnp.zeros((3, 2)), 1.84)
    with pytest.raises(TypeError, match="check_run` takes an MCMC of a FlowMCKernel, got NoneType"):
        check_run(None)
    unrun = MCMC(FlowMCKernel(potential_fn=_energy), num_warmup=1, num_samples=1, num_chains=2)
    with pytest.raises(ValueError, match="MCMC after `run`, got one that has not run"):
        from_numpyro(unrun)
    with pytest.raises(TypeError, match=r"list of per-epoch dicts .* got dict"):
        plot_training_curves({"epoch": 1, "loss": 0.1}, tmp_path / "t.png")
    not_numbers = tmp_path / "objects.npy"
    np.save(not_numbers, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects.npy.*does not load as one"):
        load_data(not_numbers)
    (tmp_path / "folder.npy").mkdir()
    with pytest.raises(ValueError, match="a data file, got a directory"):
        load_data(tmp_path / "folder.npy")


def test_settings_and_sites_name_what_is_missing():
    from numpyro_ebm.energies import energy_factor

    # Said "expected an objective in [...], got None" of a dict without "name".
    with pytest.raises(
        ValueError, match=r"objective's dict to name it .* got \{'sampler': 'ula'\}"
    ):
        TrainConfig(objective={"sampler": "ula"})
    # Said "dictionary update sequence element #0 has length 1; 2 is required".
    with pytest.raises(TypeError, match="a dict of settings, got str 'num_epochs=3'"):
        TrainConfig.from_dict("num_epochs=3")
    with pytest.raises(TypeError, match="`name` must be a string"):
        energy_factor(None, _energy, jnp.zeros(2))  # made a site named None


def test_the_memory_budget_warning_shows_sizes_under_a_mebibyte():
    from numpyro_ebm._kernel_setup import chunk_size_for_budget

    # Said "needs about 0 MiB ... (0 MiB)" for anything under half a mebibyte.
    with pytest.warns(UserWarning, match=r"needs about 512 B .* \(1 B\)"):
        chunk_size_for_budget(
            8,
            2,
            "float32",
            num_particles=4,
            chunk_size=None,
            memory_budget_bytes=1,
            adaptive=False,
        )
