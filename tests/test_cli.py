import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_ebm.cli import main
from numpyro_ebm.energies import base_log_prob
from numpyro_ebm.training import load_energy, load_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "two-modes-2to1", "--fast", "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_fast_writes_report_and_figures(fast_run):
    report = json.loads((fast_run / "report.json").read_text())
    assert report["dataset"] == "two-modes-2to1"
    assert report["settings"]["config"]["objective"]["sampler"] == "flowmc"
    assert report["fast"] is True
    metrics = report["metrics"]
    for name in (
        "mode_weights",
        "top_right_weight",
        "zone_weight_mse",
        "median_sq_log_density_error",
        "negatives_max_rhat",
        "negatives_min_ess_bulk",
    ):
        assert name in metrics
    assert sum(metrics["mode_weights"]) == pytest.approx(1.0)
    assert {"train_s", "evaluation_s", "plots_s", "total_s"} <= set(report["timings"])
    assert len(report["history"]) == 2
    for name in ("energy.png", "samples.png", "mode_weights.png", "training.png"):
        assert (fast_run / name).read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(report["figures"].values()) == sorted(
        ["energy.png", "samples.png", "mode_weights.png", "training.png"]
    )
    for name in ("settings.json", "model.eqx", "model.json", "negatives.npy"):
        assert (fast_run / name).exists()


def test_mesh_report_and_settings_record_num_devices(fast_run):
    """conftest's 2 fake CPU devices: by default the run splits its walkers over both."""
    report = json.loads((fast_run / "report.json").read_text())
    assert report["settings"]["num_devices"] == 2
    assert report["settings"]["config"]["devices"] is None
    assert json.loads((fast_run / "settings.json").read_text())["num_devices"] == 2


def test_sample_writes_draws_and_summary(fast_run, tmp_path):
    status = main(
        [
            "sample",
            str(fast_run),
            "--num-samples",
            "10",
            "--num-chains",
            "8",
            "--num-warmup",
            "5",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert status == 0
    draws = np.load(tmp_path / "samples.npy", allow_pickle=False)
    assert draws.shape == (8, 10, 2)
    assert np.all(np.isfinite(draws))
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert "r_hat" in summary[0] and "ess_bulk" in summary[0]
    assert [line.split(",")[0] for line in summary[1:]] == ["x[0]", "x[1]"]


def test_load_energy_of_a_cli_run(fast_run):
    total_energy = load_energy(fast_run)
    x = jnp.array([[1.5, 1.5], [-1.5, -1.5], [0.0, 0.0]])
    values = total_energy(x)
    assert values.shape == (3,)
    model = load_model(fast_run)
    by_hand = model.energy(x[0]) - base_log_prob(x[0], model.base_scale)
    assert float(values[0]) == pytest.approx(float(by_hand), rel=1e-6)


def test_train_resume_continues_the_run(tmp_path, capsys):
    out = str(tmp_path)
    common = [
        "train",
        "two-modes-2to1",
        "--fast",
        "--sampler",
        "ula",
        "--out",
        out,
        "--no-progress",
    ]
    assert main([*common, "--epochs", "1"]) == 0
    first = json.loads((tmp_path / "report.json").read_text())
    assert [e["epoch"] for e in first["history"]] == [1]
    # Resuming takes the saved settings: only --epochs changes.
    assert (
        main(
            ["train", "two-modes-2to1", "--out", out, "--resume", "--epochs", "2", "--no-progress"]
        )
        == 0
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert [e["epoch"] for e in report["history"]] == [1, 2]
    assert report["history"][0] == first["history"][0]
    assert report["settings"]["config"]["objective"]["sampler"] == "ula"
    assert report["metrics"]["steps"] == 20
    # A --fast run resumed without the flag is still evaluated as one (it was evaluated at
    # full length, and the report said "fast": false).
    assert report["fast"] is True
    # A misspelt run directory started a whole default run, with only a warning.
    assert main(["train", "two-modes-2to1", "--out", out + "-typo", "--resume"]) == 2
    assert "earlier run to resume" in capsys.readouterr().err
    assert not (tmp_path.parent / (tmp_path.name + "-typo")).exists()
    # A setting that would change the steps cannot change on resume.
    assert main([*common, "--resume", "--batch-size", "8"]) == 2
    assert "batch_size: saved 64, given 8" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("x,y\n0.0,nan\n1.0,2.0\n", "NaN"),
        ("x,y\n", "non-empty"),
    ],
)
def test_bad_data_file_is_a_clear_error(tmp_path, capsys, content, match):
    path = tmp_path / "data.csv"
    path.write_text(content)
    status = main(["train", str(path), "--fast", "--out", str(tmp_path / "run")])
    assert status == 2
    assert match in capsys.readouterr().err


def test_bad_rank_npy_and_unknown_name_are_clear_errors(tmp_path, capsys):
    path = tmp_path / "data.npy"
    np.save(path, np.zeros((2, 2, 2)))
    assert main(["train", str(path), "--fast", "--out", str(tmp_path / "run")]) == 2
    assert "2-D" in capsys.readouterr().err
    assert main(["train", "three-moons", "--fast", "--out", str(tmp_path / "run")]) == 2
    assert "built-in dataset name" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nowhere"), "--num-samples", "5"]) == 2
    assert "trained model" in capsys.readouterr().err


def test_usage_errors_exit_through_argparse(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["train", "two-modes-2to1"])  # --out is required
    assert excinfo.value.code == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "two-modes-2to1", "--out", "x", "--sampler", "hmc"])


def test_python_dash_m_entry_point():
    completed = subprocess.run(
        [sys.executable, "-m", "numpyro_ebm", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "train" in completed.stdout and "sample" in completed.stdout


def test_train_with_another_objective_and_set(tmp_path):
    out = tmp_path / "dsm"
    argv = ["train", "two-modes-2to1", "--fast", "--out", str(out), "--no-progress"]
    assert main([*argv, "--objective", "dsm", "--set", "noise_scale=0.2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["config"]["objective"] == {
        "name": "dsm",
        "noise_scale": 0.2,
        "num_noise_levels": 1,
        "min_noise_scale": 0.01,
    }
    # Score matching keeps no negatives: no chains to diagnose, no samples to save.
    assert "negatives_max_rhat" not in report["metrics"]
    assert not (out / "negatives.npy").exists()
    assert (out / "training.png").read_bytes().startswith(PNG_SIGNATURE)


def test_an_option_the_objective_does_not_have_is_an_error(tmp_path, capsys):
    argv = ["train", "two-modes-2to1", "--fast", "--out", str(tmp_path), "--objective", "dsm"]
    assert main([*argv, "--walkers", "64"]) == 2
    assert "num_walkers" in capsys.readouterr().err
    assert main([*argv, "--set", "noise_scale"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "settings.json").exists()  # nothing written before the error
