"""The one-call entry point: :func:`train` builds a :class:`~numpyro_ebm.training.Trainer`."""

from __future__ import annotations

import os

import equinox as eqx
import jax
import numpy as np
import optax
from jax.sharding import Mesh

from numpyro_ebm.datasets import Dataset
from numpyro_ebm.training.config import TrainConfig
from numpyro_ebm.training.step import TrainResult
from numpyro_ebm.training.trainer import Trainer

__all__ = ["train"]


def train(
    dataset: Dataset | str | os.PathLike | np.ndarray | jax.Array,
    config: TrainConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress_bar: bool = True,
    energy: eqx.Module | None = None,
    energy_optimizer: optax.GradientTransformation | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train a tilted EBM on ``dataset`` (see :class:`Trainer` and :meth:`Trainer.fit`).

    Args:
        dataset: A dataset, a built-in name, a data file path or an array ``(n, d)``.
        config: Settings; ``TrainConfig.for_dimension(d)`` for the data's d by default.
        out_dir: Directory for settings and checkpoints, or ``None``.
        resume: Continue from the last checkpoint in ``out_dir``.
        progress_bar: Show a progress bar per epoch.
        energy: An energy network of your own instead of ``config.energy``'s.
        energy_optimizer: Optax optimizer of the energy (Adam with the config's rate by default).
        mesh: A device mesh of your own (see :class:`Trainer`).

    Returns:
        The :class:`TrainResult`.

    Example:
        >>> config = TrainConfig("pcd", num_epochs=1, steps_per_epoch=2, batch_size=8,
        ...                      energy_width=4, energy_depth=1, num_data=64, grid_points=10)
        >>> config = config.with_settings(sampler="ula", num_walkers=8)
        >>> result = train("two-modes-2to1", config, progress_bar=False)
        >>> sorted(result.history[0])[:3]
        ['accept_prob', 'energy_gap', 'epoch']
    """
    trainer = Trainer(dataset, config, energy=energy, energy_optimizer=energy_optimizer, mesh=mesh)
    return trainer.fit(out_dir=out_dir, resume=resume, progress_bar=progress_bar)
