"""The Python examples of docs/getting_started.md run in order, as a reader pastes them.

The blocks share one namespace (later blocks use ``model``, ``mcmc`` and ``kernel`` of earlier
ones) and run in a temporary directory (they write ``runs/...``). The last two train on the
64-d digits for 20 epochs; here, as the notebooks' fast mode, ``TrainConfig.for_dimension``
gives 1 epoch of 4 steps, so the code runs but does not train to the end.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from numpyro_ebm.training import TrainConfig

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "getting_started.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    """Every block run in turn; the namespace they leave behind, and what they printed."""
    matplotlib.use("Agg")
    full_settings = TrainConfig.for_dimension
    short = dict(num_epochs=1, steps_per_epoch=4, validation_samples=64, num_data=1000)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("guide"))
        patch.setattr(
            TrainConfig,
            "for_dimension",
            classmethod(
                lambda cls, dim, objective="pcd": full_settings(dim, objective).replace(**short)
            ),
        )
        names: dict = {"__name__": "__main__"}
        printed = []
        for number, block in enumerate(BLOCKS):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                exec(compile(block, f"{GUIDE}: block {number}", "exec"), names)
            printed.append(out.getvalue())
        yield names, printed


def test_the_guide_has_its_examples():
    assert len(BLOCKS) >= 10


def test_sampling_examples_give_what_the_guide_says(namespace):
    names, printed = namespace
    # Block 0 prints the mean global acceptance; a flow that never fitted would give ~0.
    assert float(printed[0].split()[-1]) > 0.2
    assert names["samples"]["x"].shape == (128, 300, 2)
    # Block 2: the run is healthy, as its comment says.
    assert names["health"].problems == ()
    assert "r_hat" in printed[4]
    # Block 4: warm-up draws of every walker, flattened as get_extra_fields() does.
    assert names["flow_loss"].shape == (128 * 300,) and np.isfinite(names["flow_loss"]).any()
    assert names["positions"].shape == (64 * 300, 2)
    heavy = float(np.mean(names["positions"][:, 0] > 0))
    assert abs(heavy - 2 / 3) < 0.05  # 64 walkers x 300 draws: a 5-sigma band


def test_training_examples_save_and_load_in_raw_units(namespace):
    names, printed = namespace
    assert "'type': 'custom'" in printed[7]
    assert type(names["model"].energy).__name__ == "RBFEnergy"
    energies = np.array(printed[8].strip("[]\n").split(), dtype=float)
    assert energies.shape == (3,) and np.isfinite(energies).all()
    assert math.isfinite(names["result"].history[-1]["loss"])


def test_the_learned_prior_pulls_the_posterior_toward_the_data(namespace):
    # The prior learned from `points` is about N(mean, sd) per coordinate, the likelihood
    # N(y, [2, 0.005]): the posterior mean sits between the data's mean and y, 14 % and 20 %
    # of the way from y (conjugate weights). Without the EBM factor it would be y (the
    # control), with a flipped sign it would run away. 10 % leaves room for a prior 20 % off
    # in scale; 64 x 300 draws give a Monte Carlo error under 3 % of the gap.
    names, printed = namespace
    posterior = np.array(printed[9].strip("[]\n").split(), dtype=float)
    data_mean, observed = names["points"].mean(0), np.array([1010.0, -49.97])
    share_from_observed = (observed - posterior) / (observed - data_mean)
    assert np.all((share_from_observed > 0.1) & (share_from_observed < 0.5)), share_from_observed
