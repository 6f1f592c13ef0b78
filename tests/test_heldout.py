"""Preprocessing that travels with a run, validation during training, and held-out likelihoods."""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _objectives import TRAINER_SETTINGS
from scipy.stats import norm

from numpyro_ebm.cli import main, summary_line
from numpyro_ebm.datasets import get_dataset
from numpyro_ebm.energies import TiltedEnergy
from numpyro_ebm.preprocessing import Preprocessing
from numpyro_ebm.training import (
    TrainConfig,
    Trainer,
    evaluate,
    load_energy,
    load_model,
    sample_run,
)
from numpyro_ebm.training import validation as validation_module
from numpyro_ebm.training.data import training_data
from numpyro_ebm.training.heldout import EXACT_TEST_POINTS, heldout_metrics
from numpyro_ebm.training.model_io import saved_preprocessing
from numpyro_ebm.training.validation import mixing_message, trusted_validation

MINI = TRAINER_SETTINGS | dict(
    steps_per_epoch=4, num_walkers=32, num_particles=4, num_local_steps=1, fit_batch_size=16
)


def _zero_energy(x):
    return 0.0 * jnp.sum(x)


# ---------------------------------------------------------------------------------------------
# Preprocessing


def test_preprocessing_inverts_and_its_jacobian_is_the_log_determinant():
    raw = np.random.default_rng(0).normal([100.0, -3.0, 0.0], [50.0, 0.01, 1.0], (500, 3))
    prep = Preprocessing.fit(raw)
    assert not prep.dequantize
    z = prep.transform(raw)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(prep.inverse(z), raw, rtol=1e-5, atol=1e-5)
    jacobian = jax.jacobian(lambda x: (x - prep.shift) / prep.scale)(jnp.asarray(raw[0]))
    _, log_det = jnp.linalg.slogdet(jacobian)
    assert prep.log_det_jacobian == pytest.approx(float(log_det), abs=1e-4)
    again = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    np.testing.assert_array_equal(again.transform(raw), z)


def test_a_column_of_tiny_spread_is_scaled_and_a_constant_one_only_shifted():
    # A wavelength in metres (5e-7 ± 3e-9) was left in raw units by an absolute floor of 1e-8:
    # its held-out log-likelihood came out -2.09 where the exact one is +16.78.
    rng = np.random.default_rng(2)
    raw = np.column_stack(
        [rng.normal(0.0, 1.0, 400), rng.normal(5e-7, 3e-9, 400), np.full(400, 1e3), np.zeros(400)]
    )
    prep = Preprocessing.fit(raw)
    np.testing.assert_allclose(prep.scale[:2], raw[:, :2].std(axis=0))
    np.testing.assert_allclose(prep.transform(raw)[:, 1].std(), 1.0, atol=1e-5)
    np.testing.assert_array_equal(prep.scale[2:], 1.0)  # constant: shifted, not scaled


def test_integer_data_is_dequantised_within_its_cells():
    raw = np.random.default_rng(1).integers(0, 17, size=(300, 4)).astype(float)
    prep = Preprocessing.fit(raw)
    assert prep.dequantize
    key = jax.random.key(0)
    back = prep.inverse(prep.transform(raw, key))
    np.testing.assert_array_equal(np.floor(back + 1e-4), raw)  # x + u with u in [0, 1)
    assert np.ptp(back - raw) > 0.9  # the noise fills the cell
    with pytest.raises(ValueError, match="rng_key"):
        prep.transform(raw)


@pytest.mark.parametrize(
    ("shift", "scale", "match"),
    [(np.zeros(2), np.ones(3), "one shape"), (np.zeros(2), np.array([1.0, 0.0]), "positive")],
)
def test_preprocessing_rejects_bad_maps(shift, scale, match):
    with pytest.raises(ValueError, match=match):
        Preprocessing(shift, scale)


def test_points_of_another_dimension_are_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        Preprocessing.identity(2).transform(np.zeros((3, 5)))


# ---------------------------------------------------------------------------------------------
# Splits


def test_file_data_is_split_standardised_and_deterministic(tmp_path):
    path = tmp_path / "points.npy"
    raw = np.random.default_rng(0).normal(1000.0, 30.0, size=(200, 2))
    np.save(path, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # standardised: nothing to warn of
        first = training_data(path, jax.random.key(0), 0)
    second = training_data(path, jax.random.key(0), 0)
    assert first.data.shape == (180, 2) and first.validation.shape == (20, 2)
    np.testing.assert_array_equal(first.data, second.data)
    train_raw = first.preprocessing.inverse(np.asarray(first.data))
    valid_raw = first.preprocessing.inverse(np.asarray(first.validation))
    every = np.concatenate([train_raw, valid_raw])
    np.testing.assert_allclose(np.sort(every, axis=0), np.sort(raw, axis=0), rtol=1e-5)
    assert first.base_scale == pytest.approx(1.0, abs=1e-3)  # standardised coordinates
    # Kept in raw units, data 47 spreads from the origin are named: σ (their RMS) is 1414,
    # ρ = N(0, σ²) and the walkers' start 47 times wider than the data.
    with pytest.warns(UserWarning, match="sit 47 of their spreads from the origin"):
        none = training_data(path, jax.random.key(0), 0, preprocess="none", validation_fraction=0)
    assert none.preprocessing.is_identity and none.validation is None
    assert none.data.shape == (200, 2)


def test_builtins_keep_their_coordinates_and_real_data_its_split():
    synthetic = training_data("two-modes-2to1", jax.random.key(0), 100)
    assert synthetic.preprocessing.is_identity and synthetic.validation is None
    wine = training_data("wine", jax.random.key(0), 0)
    assert wine.data.shape == (144, 13) and wine.validation.shape == (17, 13)
    assert not wine.preprocessing.is_identity


# ---------------------------------------------------------------------------------------------
# Held-out log-likelihood in raw units


def test_heldout_log_likelihood_is_in_raw_units():
    # Model exp(-0) ρ with ρ = N(0, σ²I) on z = (x - shift) / scale: x ~ N(shift, (σ scale)²).
    sigma, shift, scale = 1.5, np.array([100.0, -2.0]), np.array([10.0, 0.1])
    prep = Preprocessing(shift, scale)
    raw = np.random.default_rng(0).normal(shift, 2 * scale, size=(50, 2))
    metrics = heldout_metrics(
        jax.random.key(0), _zero_energy, sigma, None, prep, raw, num_samples=256
    )
    exact = norm.logpdf(raw, shift, sigma * scale).sum(axis=1).mean()
    # ρ proposes exactly the model: every weight is 1, log Ẑ = 0 with no error.
    assert metrics["log_normalizer"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["heldout_log_likelihood"] == pytest.approx(exact, abs=1e-3)
    # The control: without the Jacobian the figure would be off by Σ log scale = 0.0.
    standardized = metrics["heldout_log_likelihood_standardized"]
    assert abs(standardized - exact) == pytest.approx(abs(prep.log_det_jacobian), abs=1e-3)
    assert metrics["bits_per_dim"] == pytest.approx(-exact / (2 * math.log(2)), abs=1e-3)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        heldout_metrics(jax.random.key(0), _zero_energy, sigma, None, prep, raw[:, :1])


# ---------------------------------------------------------------------------------------------
# Validation during training


def test_validation_is_recorded_and_the_best_state_kept(tmp_path):
    config = TrainConfig().with_settings(**{**MINI, "num_epochs": 3}, validation_samples=64)
    result = Trainer("wine", config).fit(out_dir=tmp_path, progress_bar=False)
    values = [entry["val_log_likelihood"] for entry in result.history]
    assert len(values) == 3 and all(math.isfinite(v) for v in values)
    assert all(entry["val_importance_ess"] > 1 for entry in result.history)
    best = int(np.argmax(values)) + 1
    assert int(result.best_state.step) == best * MINI["steps_per_epoch"]
    assert (tmp_path / "best_checkpoint").is_dir()


def test_every_epoch_validates_with_the_same_draws(monkeypatch):
    # The epochs' log Z estimates share their base draws (common random numbers), so the best
    # epoch follows the model, not the estimates' noise: with a new key per epoch a 4096-draw
    # estimate 2.4 standard errors low picked a worse epoch on wine.
    keys = []

    def recording_validate(rng_key, *args, **kwargs):
        keys.append(np.asarray(jax.random.key_data(rng_key)))
        return real_validate(rng_key, *args, **kwargs)

    real_validate = validation_module.validate
    monkeypatch.setattr("numpyro_ebm.training.validation.validate", recording_validate)
    config = TrainConfig().with_settings(**(MINI | {"num_epochs": 3}), validation_samples=64)
    Trainer("wine", config).fit(progress_bar=False)
    assert len(keys) == 3
    assert all(np.array_equal(key, keys[0]) for key in keys)


def test_early_stopping_ends_the_run_and_resumes_to_the_same_end(tmp_path, monkeypatch):
    # Validation figures that peak at epoch 2: patience 2 stops after epoch 4 of 10.
    figures = iter([1.0, 2.0, 1.5, 1.2, 9.0, 9.0])

    def fake_validate(*args, **kwargs):
        return {"val_log_likelihood": next(figures)}

    monkeypatch.setattr("numpyro_ebm.training.validation.validate", fake_validate)
    config = TrainConfig().with_settings(**{**MINI, "num_epochs": 10}, patience=2)
    result = Trainer("wine", config).fit(out_dir=tmp_path, progress_bar=False)
    assert [entry["epoch"] for entry in result.history] == [1, 2, 3, 4]
    assert int(result.best_state.step) == 2 * MINI["steps_per_epoch"]
    assert validation_module.best_epoch(result.history) == 2
    # The kept model's report takes its own epoch's figures (it took the last epoch's: 1.2).
    kept = evaluate(result._replace(state=result.best_state), num_chain_steps=10)
    assert (kept["epoch"], kept["final_val_log_likelihood"]) == (2, 2.0)
    last = evaluate(result, num_chain_steps=10)
    assert (last["epoch"], last["final_val_log_likelihood"]) == (4, 1.2)
    # Resuming a stopped run does not train on: its history already says stop.
    resumed = Trainer("wine", config).fit(out_dir=tmp_path, resume=True, progress_bar=False)
    assert len(resumed.history) == 4 and int(resumed.state.step) == int(result.state.step)
    assert int(resumed.best_state.step) == 2 * MINI["steps_per_epoch"]


def test_a_validation_with_too_few_effective_draws_is_never_the_best_nor_an_improvement():
    # Epoch 3's figure is the highest but rests on 10 effective draws of 1024 (< 5%): a log Z
    # estimate that low is biased down, so its log-likelihood is not trusted. The control is
    # the same history with a healthy ESS, where epoch 3 is the best and patience 1 waits.
    def history(ess):
        values = [(1, -5.0, 900.0), (2, -4.0, 800.0), (3, 10.0, ess)]
        return [{"epoch": e, "val_log_likelihood": v, "val_importance_ess": n, "val_draws": 1024}
                for e, v, n in values]  # fmt: skip

    assert validation_module.best_epoch(history(10.0)) == 2
    assert validation_module.should_stop(history(10.0), patience=1)
    assert validation_module.best_epoch(history(100.0)) == 3
    assert not validation_module.should_stop(history(100.0), patience=1)
    legacy = [{k: v for k, v in e.items() if k != "val_draws"} for e in history(10.0)]
    assert validation_module.best_epoch(legacy) == 3  # runs written before val_draws


def test_a_damaged_best_checkpoint_resumes_without_it(tmp_path, monkeypatch):
    # The only best checkpoint, damaged, made every resume fail although the run's own
    # checkpoints were intact. Epoch 1 is the best and epoch 3 does not beat it: the run then
    # ends without a best state, as the warning says.
    figures = iter([2.0, 1.0, 1.5])
    monkeypatch.setattr(
        "numpyro_ebm.training.validation.validate",
        lambda *args, **kwargs: {"val_log_likelihood": next(figures)},
    )
    config = TrainConfig().with_settings(**{**MINI, "num_epochs": 2})
    Trainer("wine", config).fit(out_dir=tmp_path, progress_bar=False)
    (best,) = (tmp_path / "best_checkpoint").glob("*.eqx")
    best.write_bytes(best.read_bytes()[:100])
    with pytest.warns(UserWarning, match="resuming without the best validation's state"):
        resumed = Trainer("wine", config).fit(
            out_dir=tmp_path, resume=True, progress_bar=False, num_epochs=3
        )
    assert len(resumed.history) == 3 and resumed.best_state is None


def test_frozen_negatives_warn_and_mixing_ones_do_not():
    settings = {**MINI, "num_epochs": 1, "steps_per_epoch": 40}
    frozen = TrainConfig().with_settings(**settings, sampler="ula", ula_step_size=1e-12)
    with pytest.warns(RuntimeWarning, match="not mixing") as caught:
        result = Trainer("two-modes-2to1", frozen).fit(progress_bar=False)
    assert result.history[0]["negatives_rhat"] > 1.1
    assert len([w for w in caught if "not mixing" in str(w.message)]) == 1
    # Walker by walker, on the final model: the check that catches walkers stuck in their
    # modes, whose R̂ over groups of walkers stays near 1.03 (MALA and ULA baselines).
    with pytest.warns(RuntimeWarning, match="'ula' negative sampler's walkers do not mix"):
        assert evaluate(result, num_chain_steps=40)["negatives_max_rhat"] > 1.1
    healthy = TrainConfig().with_settings(**settings)  # flowmc: flow moves mix the walkers
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = Trainer("two-modes-2to1", healthy).fit(progress_bar=False)
        assert evaluate(result, num_chain_steps=40)["negatives_max_rhat"] < 1.1
    assert result.history[0]["negatives_rhat"] < 1.1


def test_a_useless_flow_is_named():
    message = mixing_message({"epoch": 3, "global_accept_prob": 0.001})
    assert "global moves" in message
    assert mixing_message({"epoch": 3, "global_accept_prob": 0.001}, global_moves=False) is None


# ---------------------------------------------------------------------------------------------
# numpyro-ebm evaluate


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    raw = np.random.default_rng(0).normal([500.0, 5.0], [40.0, 0.5], size=(400, 2))
    np.savetxt(root / "train.csv", raw[:300], delimiter=",")
    np.savetxt(root / "test.csv", raw[300:], delimiter=",")
    assert main(["train", str(root / "train.csv"), "--out", str(root / "run"), "--fast"]) == 0
    return root


def test_evaluate_writes_json_in_raw_units(file_run, capsys):
    out = file_run / "eval.json"
    code = main(
        ["evaluate", str(file_run / "run"), "--data", str(file_run / "test.csv"),
         "--out", str(out), "--num-samples", "512"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("log_normalizer", "log_normalizer_stderr", "heldout_log_likelihood",
                "heldout_log_likelihood_stderr", "importance_ess", "method"):  # fmt: skip
        assert key in result
    assert json.loads(capsys.readouterr().out) == result
    log_det = -math.log(40.0) - math.log(0.5)  # the data's scales, about
    shift = result["heldout_log_likelihood"] - result["heldout_log_likelihood_standardized"]
    assert shift == pytest.approx(log_det, abs=0.2)
    # The raw-unit figure is that of a density on raw data: a Gaussian fit scores near it.
    raw = np.loadtxt(file_run / "test.csv", delimiter=",")
    gaussian = norm.logpdf(raw, raw.mean(0), raw.std(0)).sum(axis=1).mean()
    assert abs(result["heldout_log_likelihood"] - gaussian) < 1.0


def test_file_runs_plot_what_they_know(file_run):
    report = json.loads((file_run / "run" / "report.json").read_text())
    # Modes of file data are unknown: no empty mode-weight figure; the 2-D energy is drawn.
    assert sorted(report["figures"]) == ["energy", "samples", "training"]
    # The report carries the validation figures of the last epoch, in the data's raw units
    # as `evaluate`'s: near a Gaussian fit's, where the standardised figure was about
    # log 40 + log 0.5 = 3.0 nats higher.
    validation = report["metrics"]["final_val_log_likelihood"]
    raw = np.loadtxt(file_run / "train.csv", delimiter=",")
    gaussian = norm.logpdf(raw, raw.mean(0), raw.std(0)).sum(axis=1).mean()
    assert abs(validation - gaussian) < 1.0


def test_evaluate_errors_are_clear(file_run, tmp_path, capsys):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 3)))
    assert main(["evaluate", str(file_run / "run"), "--data", str(wrong)]) == 2
    assert "shape (n, 2)" in capsys.readouterr().err


def test_evaluate_scores_exact_draws_of_a_known_density(file_run, tmp_path):
    # Regression: a built-in with a known density was refused ("has no test split").
    out = tmp_path / "eval.json"
    args = ["evaluate", str(file_run / "run"), "--data", "two-modes-2to1", "--out", str(out)]
    assert main([*args, "--num-samples", "512", "--seed", "3"]) == 0
    result = json.loads(out.read_text())
    dataset = get_dataset("two-modes-2to1")
    points = dataset.sample(jax.random.key(4), EXACT_TEST_POINTS)
    exact = float(np.mean(dataset.log_prob(points)))
    assert result["exact_log_likelihood"] == pytest.approx(exact, rel=1e-6)
    kl = result["exact_log_likelihood"] - result["heldout_log_likelihood"]
    assert result["kl_divergence"] == pytest.approx(kl)
    assert 0 < result["kl_divergence_stderr"] < math.inf
    # The model was trained on other data (means 500 and 5): it is far from this density.
    assert result["kl_divergence"] > 10


def test_kl_divergence_from_exact_draws_and_its_standard_error():
    # p = N(0, I₂), model = ρ = N(0, s² I₂) (zero energy, σ = s: log Z is exact, stderr 0).
    # KL = d (log s + 1/(2s²) − 1/2); the gap log p − log q = −|x|²(1 − 1/s²)/2 + d log s has
    # variance (1 − 1/s²)² d / 2. Checked at 4.5 standard errors (false alarm 6.8e-6); a
    # standard error of log Z's alone, as before, was 0 here and the check failed.
    dim, scale, num_points = 2, 1.5, 2000
    points = np.asarray(jax.random.normal(jax.random.key(7), (num_points, dim)))
    log_p = norm.logpdf(points).sum(axis=1)
    metrics = heldout_metrics(
        jax.random.key(0),
        _zero_energy,
        scale,
        None,
        Preprocessing.identity(dim),
        points,
        num_samples=256,
        exact_log_density=log_p,
    )
    kl = dim * (math.log(scale) + 0.5 / scale**2 - 0.5)
    stderr = (1 - scale**-2) * math.sqrt(dim / 2 / num_points)
    assert metrics["kl_divergence_stderr"] == pytest.approx(stderr, rel=0.1)
    assert abs(metrics["kl_divergence"] - kl) < 4.5 * metrics["kl_divergence_stderr"]
    assert metrics["exact_log_likelihood"] == pytest.approx(np.mean(log_p))


def test_points_of_zero_model_density_are_named():
    # An outlier where the energy overflows made the held-out log-likelihood -inf (null in
    # report.json) with nothing saying why.
    def energy(x):
        return jnp.where(x[0] > 100.0, jnp.inf, 0.0)

    points = np.array([[0.0, 0.0], [1.0, 1.0], [1e3, 0.0]])
    args = (jax.random.key(0), energy, 1.0, None, Preprocessing.identity(2))
    with pytest.warns(UserWarning, match=r"1 of 3 held-out points zero density .* rows \[2\]"):
        metrics = heldout_metrics(*args, points, num_samples=64)
    assert metrics["heldout_log_likelihood"] == -math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the control: finite everywhere, no warning
        heldout_metrics(*args, points[:2], num_samples=64)


def test_load_energy_and_sample_are_in_raw_units(file_run, tmp_path):
    run = file_run / "run"
    model = load_model(run)
    prep = saved_preprocessing(model.settings)
    raw = np.loadtxt(file_run / "test.csv", delimiter=",")[:5]
    z = jnp.asarray(prep.transform(raw))
    in_z = jax.vmap(TiltedEnergy(model.energy, model.base_scale))(z)
    np.testing.assert_allclose(load_energy(run)(raw), in_z - prep.log_det_jacobian, rtol=1e-4)
    samples_path, _ = sample_run(run, num_samples=20, num_chains=8, num_warmup=10, out_dir=tmp_path)
    draws = np.load(samples_path).reshape(-1, 2)
    # Draws come back in the data's units: centred near (500, 5), not near the origin.
    assert abs(draws[:, 0].mean() - 500.0) < 40.0 and abs(draws[:, 1].mean() - 5.0) < 0.5


def test_the_summary_of_a_file_run_names_its_validation_and_loss(file_run):
    # Regression: file data have no known modes, and the printed summary was empty.
    metrics = json.loads((file_run / "run" / "report.json").read_text())["metrics"]
    summary = summary_line(metrics)
    assert summary.startswith("final_val_log_likelihood ")
    assert "final_loss " in summary and "top_right_weight" not in summary
    # Whether the last validation is trusted is recorded, and the summary says so if it is not.
    assert metrics["final_val_trusted"] == (trusted_validation(_unprefixed(metrics)) > -math.inf)
    assert ("untrusted" in summary) == (not metrics["final_val_trusted"])


def _unprefixed(metrics):
    return {name.removeprefix("final_"): value for name, value in metrics.items()}


@pytest.mark.parametrize(("ess", "untrusted"), [(2.47, True), (3000.0, False)])
def test_the_summary_flags_an_untrusted_final_validation(ess, untrusted):
    # A ULA run's last validation rested on 2 effective draws of 4096: the progress bar said
    # "untrusted", the closing summary printed the too-high figure as it was.
    metrics = {"final_val_log_likelihood": -2.929, "final_val_importance_ess": ess}
    summary = summary_line(metrics | {"final_val_draws": 4096, "final_loss": 0.1})
    assert ("(untrusted: ESS 2 of 4096 draws)" in summary) == untrusted
