"""The trainer on a device mesh: 2 fake CPU devices here (conftest), 4 in a subprocess.

``pytest -k mesh`` selects these. One tiny run on 2 devices and the same run on 1 serve most
tests of this module; the last one's subprocess has 4 devices and trains with ULA negatives.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec
from scipy import stats

from numpyro_ebm.flows import default_flow, fit_flow, flow_optimizer, split_flow
from numpyro_ebm.training import TrainConfig, Trainer
from numpyro_ebm.training.mesh import (
    data_mesh,
    num_devices_for,
    put_on_mesh,
    split_leading_axis,
    training_mesh,
)

# A tiny run whose negatives leave ρ quickly: σ = 20 is far wider than the two modes (|x| ≲ 5),
# so the EBM pulls the walkers in within 16 steps (std 20 -> ~1.5). Its negatives are MALA
# moves of FlowMCKernel (the flowMC kernel without flow moves): ~6 s to compile on 2 CPU cores
# where flowMC's program takes ~15 s; flowMC's training on 2 devices, bit-identical resume
# included, runs in test_training.py (conftest's 2 devices are the default mesh), and the
# split flow-fitting batch is checked below on fit_flow itself.
MESH_RUN = dict(
    num_epochs=2,
    steps_per_epoch=8,
    batch_size=64,
    energy_width=16,
    energy_depth=1,
    num_data=512,
    grid_points=10,
    num_walkers=128,
    num_particles=4,
    num_local_steps=1,
    fit_batch_size=64,
    learning_rate=3e-2,
    base_scale=20.0,
    sampler="mala",
)
# Family-wise false-alarm rate of the two-sample comparison (Bonferroni over coordinates).
FALSE_ALARM_RATE = 1e-3


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    """The run on 2 devices (into a directory) and on 1, with their trainers and first walkers."""
    out = tmp_path_factory.mktemp("mesh")
    config = TrainConfig().with_settings(**MESH_RUN)
    two = Trainer("two-modes-2to1", config.replace(devices=2))
    one = Trainer("two-modes-2to1", config.replace(devices=1))
    initial = np.asarray(two.negatives(two.init_state()))
    return {
        "two": two,
        "one": one,
        "initial": initial,
        "result_two": two.fit(out_dir=out / "run", progress_bar=False),
        "result_one": one.fit(progress_bar=False),
        "out": out / "run",
    }


def _same_distribution(a, b):
    """Per-coordinate two-sample KS p-values, and whether all pass at the family-wise rate."""
    p_values = [stats.ks_2samp(a[:, j], b[:, j]).pvalue for j in range(a.shape[1])]
    return p_values, min(p_values) >= FALSE_ALARM_RATE / a.shape[1]


def test_mesh_num_devices_default_divides_and_explicit_errors_name_both():
    assert num_devices_for(None, {"num_walkers": 128, "batch_size": 64}, available=8) == 8
    assert num_devices_for(None, {"num_walkers": 6, "batch_size": 4}, available=8) == 2
    assert num_devices_for(None, {"num_walkers": 7}, available=2) == 1
    with pytest.raises(ValueError, match="num_walkers = 6 to be a multiple of the 4 devices"):
        num_devices_for(4, {"batch_size": 8, "num_walkers": 6}, available=4)
    with pytest.raises(ValueError, match="at most the 2 devices there are, got 3"):
        num_devices_for(3, {}, available=2)
    with pytest.raises(ValueError, match="`devices` must be an integer >= 1"):
        TrainConfig(devices=0)


def test_mesh_trainer_rejects_sizes_the_devices_do_not_divide():
    config = TrainConfig().with_settings(**(MESH_RUN | dict(devices=2, batch_size=63)))
    with pytest.raises(ValueError, match="batch_size = 63 to be a multiple of the 2 devices"):
        Trainer("two-modes-2to1", config)


def test_mesh_explicit_axes_become_automatic():
    mesh = jax.make_mesh((2,), ("walkers",), axis_types=(AxisType.Explicit,))
    auto = training_mesh(mesh, None, {"num_walkers": 4})
    assert auto.axis_types == (AxisType.Auto,) and auto.axis_names == ("walkers",)
    assert training_mesh(None, None, {"num_walkers": 4}).shape == data_mesh(2).shape


def test_mesh_trainer_under_set_mesh_of_explicit_axes_is_a_clear_error():
    mesh = jax.make_mesh((2,), ("walkers",), axis_types=(AxisType.Explicit,))
    config = TrainConfig().with_settings(**MESH_RUN)
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="expected the Trainer to run outside"):
        Trainer("two-modes-2to1", config)
    assert Trainer("two-modes-2to1", config, mesh=mesh).mesh.axis_types == (AxisType.Auto,)


def test_mesh_walkers_stay_split_and_parameters_replicated(mesh_runs):
    two, state = mesh_runs["two"], mesh_runs["result_two"].state
    walkers = two.negatives(state)
    assert len(walkers.sharding.device_set) == 2
    assert walkers.sharding.spec == PartitionSpec(("data",))
    assert walkers.addressable_shards[0].data.shape == (MESH_RUN["num_walkers"] // 2, 2)
    # The program's output layout, i.e. every chunk's: the walkers split, the flow's buffer
    # split along its walker axis, every energy parameter whole on both devices.
    layout = two._program.layout
    assert layout.objective_state.z["x"].spec == PartitionSpec(("data",))
    assert layout.objective_state.adaptation.buffer.spec[1] in ("data", ("data",))
    for leaf in jax.tree.leaves(state.energy_params) + jax.tree.leaves(state.opt_state):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 2


def test_mesh_two_devices_match_one_in_distribution(mesh_runs):
    """KS per coordinate at a family-wise false-alarm rate of 1e-3 (for independent samples of
    one law; the two runs draw the same random numbers, so their walkers are positively
    dependent and the test is conservative). Negative control: a "stale shard" bug, where the
    second device's walkers never moved from ρ, must fail the same test."""
    two = np.asarray(mesh_runs["two"].negatives(mesh_runs["result_two"].state))
    one = np.asarray(mesh_runs["one"].negatives(mesh_runs["result_one"].state))
    p_values, same = _same_distribution(two, one)
    assert same, p_values
    half = len(two) // 2
    stale = np.concatenate([two[:half], mesh_runs["initial"][half:]])
    p_values, same = _same_distribution(stale, one)
    assert not same, p_values


def test_mesh_resume_on_another_device_count(mesh_runs):
    """2 epochs on 2 devices, resumed on 1 for a third: the checkpoint holds whole arrays."""
    out = mesh_runs["out"]
    assert json.loads((out / "settings.json").read_text())["num_devices"] == 2
    assert mesh_runs["two"].settings()["num_devices"] == 2
    resumed = mesh_runs["one"].fit(out_dir=out, resume=True, progress_bar=False, num_epochs=3)
    assert [entry["epoch"] for entry in resumed.history] == [1, 2, 3]
    # The first two epochs are the 2-device run's, as saved (JSON: NaN equals NaN).
    assert json.dumps(resumed.history[:2]) == json.dumps(mesh_runs["result_two"].history)
    assert int(resumed.state.step) == 3 * MESH_RUN["steps_per_epoch"]
    assert json.loads((out / "settings.json").read_text())["num_devices"] == 1


REPOSITORY = Path(__file__).parents[1]


def _run_python(script: Path, *args: str, timeout: float, **env: str) -> dict:
    """Run a script in a new process (with these environment variables) and read the JSON
    object its last output line holds."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])
    completed = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


_FOUR_DEVICES = """
import json, sys
import jax
from jax.sharding import AxisType
from numpyro_ebm.training import TrainConfig, Trainer
config = TrainConfig().with_settings(**json.loads(sys.argv[2]) | {"sampler": "ula"})
mesh = jax.make_mesh((4,), ("walkers",), axis_types=(AxisType.Explicit,))
four = Trainer("two-modes-2to1", config, mesh=mesh)
result = four.fit(out_dir=sys.argv[1], progress_bar=False)
walkers = four.negatives(result.state)
print(json.dumps({
    "devices": len(jax.devices()),
    "walker_devices": len(walkers.sharding.device_set),
    "shard_rows": walkers.addressable_shards[0].data.shape[0],
    "num_devices": json.load(open(sys.argv[1] + "/settings.json"))["num_devices"],
    "epochs": [entry["epoch"] for entry in result.history],
}))
"""


def test_mesh_four_devices_on_an_explicit_axes_mesh(tmp_path):
    """A user's mesh of 4 devices with Explicit axes splits the walkers 4 ways."""
    script = tmp_path / "four.py"
    script.write_text(_FOUR_DEVICES)
    report = _run_python(
        script, str(tmp_path / "run"), json.dumps(MESH_RUN), timeout=300, JAX_NUM_CPU_DEVICES="4"
    )
    assert report["devices"] == 4 and report["walker_devices"] == 4 and report["num_devices"] == 4
    assert report["shard_rows"] == MESH_RUN["num_walkers"] // 4
    assert report["epochs"] == [1, 2]


def test_mesh_flow_fitting_batch_is_split():
    """``fit_flow(batch_sharding=...)`` constrains each batch to the walkers' split (without
    it, nothing does). A constraint changes no value; flowMC training on 2 devices runs it
    (test_training.py's flowMC runs, on conftest's 2 devices)."""
    mesh = data_mesh(2)
    flow = default_flow(jax.random.key(0), 2, flow_layers=1, nn_width=8, transformer="affine")
    params, static = split_flow(flow)
    optimizer = flow_optimizer(1e-2)
    x = put_on_mesh(jax.random.normal(jax.random.key(1), (64, 2)), split_leading_axis(mesh))

    def lowered(batch_sharding):
        def run(params, x):
            return fit_flow(
                jax.random.key(2),
                params,
                optimizer.init(params),
                static,
                x,
                optimizer=optimizer,
                num_steps=2,
                batch_size=32,
                batch_sharding=batch_sharding,
            )

        return jax.jit(run).lower(params, x)

    assert "sharding_constraint" in lowered(split_leading_axis(mesh)).as_text()
    assert "sharding_constraint" not in lowered(None).as_text()


@pytest.mark.slow
def test_mesh_multihost_training_and_kernel_across_two_processes(tmp_path):
    """benchmarks/multihost.py: 2 processes x 2 fake CPU devices through jax.distributed on
    localhost train one run (written once, by process 0) and run FlowMCKernel on 4 global
    devices; one process with 2 devices then resumes the run. Minutes on 2 shared CPU cores
    (gloo collectives), hence slow: ``pytest -m slow -k multihost``."""
    script = REPOSITORY / "benchmarks" / "multihost.py"
    report = _run_python(script, "--out", str(tmp_path / "run"), timeout=900)
    for process in report["processes"]:
        assert process["global_devices"] == 4 and process["local_devices"] == 2
        assert process["num_devices"] == 4 and process["walker_devices"] == 4
        assert process["kernel_draws_devices"] == 4 and process["steps"] == 8
    # Every process gathers the same draws; their mean is near the target's 0 (320 draws of
    # N(0, I): 4 sigma of the mean over all draws is ~0.22 even for independent draws, wider
    # for correlated ones, so 1.0 only catches gross failures).
    assert report["processes"][0]["kernel_mean"] == report["processes"][1]["kernel_mean"]
    assert max(abs(m) for m in report["processes"][0]["kernel_mean"]) < 1.0
    # One state file and one history file per checkpoint kept: written once.
    assert report["checkpoint_files"] == [
        "step_00000004.eqx",
        "step_00000004.json",
        "step_00000008.eqx",
        "step_00000008.json",
    ]
    assert report["resumed_on_one_process"] == {"num_devices": 2, "epochs": [1, 2, 3], "steps": 12}
