"""The training data of a run: the dataset it names, its points, and the tilt's scale σ."""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_ebm.datasets import Dataset, get_dataset

__all__ = ["TrainingData", "training_data"]


class TrainingData(NamedTuple):
    """A run's data.

    Attributes:
        dataset: The dataset.
        spec: What names it in the run's settings: its name, or the file path given.
        data: The training points ``(n, d)``, float32.
        base_scale: σ of the tilt ρ = N(0, σ² I).
    """

    dataset: Dataset
    spec: str
    data: jax.Array
    base_scale: float


def training_data(
    dataset: Dataset | str | os.PathLike,
    rng_key: jax.Array,
    num_data: int,
    base_scale: float | None = None,
) -> TrainingData:
    """Resolve ``dataset`` and its training points.

    Args:
        dataset: A :class:`~numpyro_ebm.datasets.Dataset`, a built-in name, or a data file path.
        rng_key: Key of the draws of a dataset given by its distribution.
        num_data: Points drawn from a dataset given by its distribution (file data is used as
            given).
        base_scale: σ of the tilt; ``None`` takes the root mean square of the data's
            coordinates, so that ρ covers the data.

    Returns:
        The data.

    Example:
        >>> import jax
        >>> run = training_data("two-modes-2to1", jax.random.key(0), 100)
        >>> run.spec, run.data.shape
        ('two-modes-2to1', (100, 2))
    """
    if isinstance(dataset, Dataset):
        spec = dataset.name
    else:
        dataset, spec = get_dataset(dataset), str(dataset)
    if dataset.data is not None:
        data = np.asarray(dataset.data, dtype=np.float32)
    else:
        data = np.asarray(dataset.sample(rng_key, num_data), dtype=np.float32)
    if base_scale is None:
        base_scale = float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
    return TrainingData(dataset, spec, jnp.asarray(data), float(base_scale))
