"""A failed ``numpyro-ebm`` command never changes its run directory and names the bad file.

Every file that ``train --resume`` and ``sample`` read is damaged in turn (missing, not JSON,
a key missing or of the wrong type, a wrong array): the command exits with status 2, prints
``error: <file>: <what is wrong>`` on stderr (no traceback), and leaves every file of the run
directory as it was. One tiny ULA run is shared (copied per test).
"""

import json
import os
import shutil
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from numpyro_ebm.cli import main
from numpyro_ebm.training import TrainConfig, load_model, train
from numpyro_ebm.training.checkpoint import write_json

DATA = "two-modes-2to1"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-epoch ``--fast`` ULA run: settings, checkpoints, model files."""
    out = tmp_path_factory.mktemp("run") / "run"
    args = ["train", DATA, "--fast", "--sampler", "ula", "--epochs", "1", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    return out


@pytest.fixture
def run(run_dir, tmp_path):
    """A fresh copy of the shared run, for a test to damage."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _fails_cleanly(args, directory, capsys, bad_file, what):
    """Run ``args``: exit 2, ``error: <bad_file>: <what>`` on stderr, directory unchanged."""
    before = _snapshot(directory)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {bad_file}: " in err, err
    assert what in err, err
    assert "Traceback" not in err
    assert _snapshot(directory) == before


def _resume(run):
    return ["train", DATA, "--resume", "--out", str(run), "--no-progress"]


def _sample(run):
    return ["sample", str(run), "--num-samples", "2", "--num-chains", "4", "--no-progress"]


def _edit_json(path, edit):
    content = json.loads(path.read_text())
    path.write_text(json.dumps(edit(content)))


def _with_preprocessing(settings, **changes):
    return {**settings, "preprocessing": {**settings["preprocessing"], **changes}}


# -- train --resume ------------------------------------------------------------------------


def test_resume_without_settings_writes_nothing_when_it_fails(run, capsys):
    # Regression: a fresh settings.json of defaults was written before the checkpoint was
    # found not to fit the defaults, leaving the run unusable even with the right flags.
    (run / "settings.json").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no settings.json": checked below with the flags
        _fails_cleanly(
            _resume(run), run, capsys, run / "checkpoints" / "step_00000010.eqx", "fits the state"
        )
    assert not (run / "settings.json").exists()


def test_resume_without_settings_continues_with_the_right_flags(run):
    (run / "settings.json").unlink()
    flags = ["--fast", "--sampler", "ula", "--epochs", "2"]
    with pytest.warns(UserWarning, match="no settings.json"):
        assert main([*_resume(run), *flags]) == 0
    report = json.loads((run / "report.json").read_text())
    assert [entry["epoch"] for entry in report["history"]] == [1, 2]
    assert (
        json.loads((run / "settings.json").read_text())["config"]["objective"]["sampler"] == "ula"
    )


def test_resume_to_fewer_epochs_than_done_fails_cleanly(run, capsys):
    # Regression: it returned the longer run's state and rewrote settings.json to the fewer
    # epochs, so the run directory contradicted itself.
    flags = ["--fast", "--sampler", "ula"]
    assert main([*_resume(run), *flags, "--epochs", "2"]) == 0
    _fails_cleanly(
        [*_resume(run), *flags, "--epochs", "1"], run, capsys, run, "expected `num_epochs` >= 2"
    )


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda path: path.write_text("{"), "invalid JSON"),
        (lambda path: _edit_json(path, lambda s: {k: v for k, v in s.items() if k != "config"}),
         "missing key 'config'"),
        (lambda path: _edit_json(path, lambda s: {**s, "config": []}),
         "key 'config' must be an object, got []"),
        (lambda path: _edit_json(path, lambda s: {**s, "config": {**s["config"], "seed": "x"}}),
         "`seed` must be an integer in [0, 2**32), got 'x'"),
        (lambda path: path.write_text("[1, 2]"), "expected a JSON object, got list"),
    ],
)  # fmt: skip
def test_resume_with_damaged_settings(run, capsys, damage, what):
    damage(run / "settings.json")
    _fails_cleanly(_resume(run), run, capsys, run / "settings.json", what)


@pytest.mark.parametrize(
    ("suffix", "damage", "what"),
    [
        (".json", lambda path: path.write_text("not json"), "invalid JSON"),
        (".json", lambda path: _edit_json(path, lambda m: {**m, "history": None}),
         "key 'history' must be a list, got None"),
        (".json", lambda path: _edit_json(path, lambda m: {**m, "partial_epoch": {"loss": "x"}}),
         "partial_epoch['loss'] must be a list of numbers"),
        (".eqx", lambda path: path.write_bytes(path.read_bytes()[:100]), "damaged file"),
    ],
)  # fmt: skip
def test_resume_with_a_damaged_checkpoint(run, capsys, suffix, damage, what):
    path = run / "checkpoints" / f"step_00000010{suffix}"
    damage(path)
    _fails_cleanly(_resume(run), run, capsys, path, what)


# -- sample --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda path: path.write_text('{"dim": 2,'), "invalid JSON"),
        (lambda path: _edit_json(path, lambda s: {k: v for k, v in s.items() if k != "dim"}),
         "missing key 'dim'"),
        (lambda path: _edit_json(path, lambda s: {**s, "dim": "two"}),
         "key 'dim' must be a positive integer, got 'two'"),
        (lambda path: _edit_json(path, lambda s: {**s, "has_flow": "no"}),
         "key 'has_flow' must be true or false, got 'no'"),
        (lambda path: _edit_json(path, lambda s: {**s, "base_scale": -1.0}),
         "key 'base_scale' must be a positive finite number, got -1.0"),
        (lambda path: path.write_text("null"), "expected a JSON object, got NoneType"),
        (lambda path: _edit_json(path, lambda s: _with_preprocessing(s, scale=[1.0])),
         "expected `shift` and `scale` of one shape (d,), got (2,) and (1,)"),
        (lambda path: _edit_json(path, lambda s: _with_preprocessing(s, shift=[0.0] * 3,
                                                                     scale=[1.0] * 3)),
         "expected a preprocessing of dimension 2, got 3"),
    ],
)  # fmt: skip
def test_sample_with_a_damaged_model_json(run, capsys, damage, what):
    # Regression: a KeyError or ValueError traceback, or a message without the file.
    damage(run / "model.json")
    _fails_cleanly(_sample(run), run, capsys, run / "model.json", what)


@pytest.mark.parametrize(
    ("name", "damage", "what"),
    [
        ("model.eqx", lambda path: path.write_bytes(b"\x00" * 10), "damaged file"),
        ("model.eqx", lambda path: path.unlink(), "no such file"),
        ("negatives.npy", lambda path: path.write_bytes(b"garbage"), "not a readable .npy"),
        ("negatives.npy", lambda path: np.save(path, np.zeros((4, 3))),
         "expected an array of shape (n, 2) with n >= 1, got shape (4, 3)"),
        ("negatives.npy", lambda path: np.save(path, np.full((4, 2), np.nan)),
         "expected finite positions"),
    ],
)  # fmt: skip
def test_sample_with_a_damaged_model_file(run, capsys, name, damage, what):
    damage(run / name)
    _fails_cleanly(_sample(run), run, capsys, run / name, what)


# -- output paths, a new run in an old directory, interruptions -----------------------------


def test_a_new_run_removes_the_earlier_runs_model_first(run):
    """Killed before it writes its own model, a new run must not leave the old one behind."""
    assert {"model.json", "model.eqx", "negatives.npy", "report.json"} <= set(_snapshot(run))
    config = TrainConfig("pcd", num_epochs=1, steps_per_epoch=2, batch_size=16)
    config = config.with_settings(sampler="ula", num_walkers=16, energy_width=8)
    with pytest.warns(
        UserWarning, match=r"removing the earlier run's checkpoints \(1\) and outputs \(\d+ files"
    ):
        train(DATA, config, out_dir=run, progress_bar=False)  # writes no model, as if killed
    assert {path.name for path in run.iterdir() if path.is_file()} == {"settings.json"}
    with pytest.raises(FileNotFoundError, match="trained model"):
        load_model(run)


def test_output_paths_in_the_way_fail_before_any_work(run, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "mine.txt"
    blocker.write_text("mine")
    before = _snapshot(run)

    def fails_before_work(args, what):
        capsys.readouterr()
        assert main([*args, "--no-progress"] if args[0] != "evaluate" else args) == 2
        err = capsys.readouterr().err
        assert what in err and "Traceback" not in err, err

    train_args = ["train", DATA, "--fast", "--out"]
    fails_before_work([*train_args, str(blocker)], "--out to name a directory")
    fails_before_work([*train_args, str(blocker / "run")], f"{str(blocker)!r} is a file")
    # `sample` checks --out before its MCMC run, not after it.
    monkeypatch.setattr("numpyro_ebm.training.sample_run", lambda *a, **k: pytest.fail("ran"))
    fails_before_work([*_sample(run)[:-1], "--out", str(blocker)], "--out to name a directory")
    evaluate = ["evaluate", str(run), "--data", DATA, "--num-samples", "8", "--out"]
    fails_before_work([*evaluate, str(tmp_path)], "--out to name a file")
    assert blocker.read_text() == "mine"
    assert _snapshot(run) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine.txt", "run"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "report.json"
    target.mkdir()  # in the way of the rename
    with pytest.raises(IsADirectoryError):
        write_json(target, {"a": 1})
    assert [path.name for path in tmp_path.iterdir()] == ["report.json"]


def test_negative_seeds_and_counts_are_usage_errors(run, capsys):
    for option, value, minimum in (("--seed", "-1", 0), ("--num-chains", "1", 2)):
        with pytest.raises(SystemExit) as exit_info:
            main([*_sample(run), option, value])
        assert exit_info.value.code == 2
        assert f"expected an integer >= {minimum}, got {value}" in capsys.readouterr().err


def test_ctrl_c_is_a_one_line_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("numpyro_ebm.training.train", interrupted)
    assert main(["train", DATA, "--fast", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == "numpyro-ebm train: interrupted (continue with --resume)\n"


def test_sigterm_is_a_one_line_message_and_the_handler_is_restored(tmp_path, capsys, monkeypatch):
    # A batch scheduler's preemption (SIGTERM) killed the process with no word of --resume.
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this
        raise AssertionError("SIGTERM was not handled")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr("numpyro_ebm.training.train", terminated)
    assert main(["train", DATA, "--fast", "--out", str(tmp_path / "run")]) == 143
    assert capsys.readouterr().err == "numpyro-ebm train: terminated (continue with --resume)\n"
    assert signal.getsignal(signal.SIGTERM) is before


def _strict_json(text: str):
    """Parse as strict JSON (``jq``, JavaScript): ``NaN`` and ``Infinity`` are errors."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_reports_are_strict_json_and_checkpoints_keep_nan(tmp_path):
    content = {"rhat": float("nan"), "values": [1.0, float("inf"), -float("inf")], "n": 3}
    report = write_json(tmp_path / "report.json", content)
    assert _strict_json(report.read_text()) == {"rhat": None, "values": [1.0, None, None], "n": 3}
    # A checkpoint's history must resume to the same values, NaN included; it is not strict
    # (the negative control of the parser above).
    exact = write_json(tmp_path / "step.json", content, exact=True)
    with pytest.raises(ValueError, match="not strict JSON: NaN"):
        _strict_json(exact.read_text())
    restored = json.loads(exact.read_text())
    assert np.isnan(restored["rhat"]) and restored["values"][1:] == [np.inf, -np.inf]


def test_every_file_of_a_run_is_strict_json_but_its_checkpoints(run_dir):
    written = sorted(run_dir.rglob("*.json"))
    checkpoints = [path for path in written if path.parent.name == "checkpoints"]
    assert {path.name for path in written} >= {"report.json", "settings.json", "model.json"}
    for path in set(written) - set(checkpoints):
        _strict_json(path.read_text())
