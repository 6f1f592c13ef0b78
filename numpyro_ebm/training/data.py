"""The training data of a run: the dataset, its preprocessed splits, and the tilt's scale σ.

Data given by samples (a file, a real built-in) is split into training and validation points
(a file's by ``validation_fraction``, a built-in's by its own split) and, under
``preprocess="auto"``, mapped by a :class:`~numpyro_ebm.preprocessing.Preprocessing` fitted on
the training split: the model lives in standardised coordinates, and the map travels with the
run. Built-ins with a known density are drawn and kept in their own coordinates, so that their
exact densities and mode weights apply to the model unchanged.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_ebm._checks import typed_key
from numpyro_ebm._warnings import warn_user
from numpyro_ebm.datasets import Dataset, get_dataset
from numpyro_ebm.preprocessing import Preprocessing, is_integer_valued

__all__ = ["TrainingData", "training_data"]

#: Validation share of a file's data under ``validation_fraction=None``.
DEFAULT_VALIDATION_FRACTION = 0.1


class TrainingData(NamedTuple):
    """A run's data.

    Attributes:
        dataset: The dataset.
        spec: What names it in the run's settings: its name, or the file path given.
        data: The training points ``(n, d)`` in the model's coordinates, float32.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        preprocessing: The map from raw data to the model's coordinates.
        validation: Validation points in the model's coordinates, or ``None``.
    """

    dataset: Dataset
    spec: str
    data: jax.Array
    base_scale: float
    preprocessing: Preprocessing
    validation: jax.Array | None


def _split(
    dataset: Dataset, rng_key: jax.Array, fraction: float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The raw training and validation points of a dataset given by samples."""
    data = np.asarray(dataset.data, dtype=np.float64)
    if fraction is None:
        if dataset.validation_data is not None:
            return data, np.asarray(dataset.validation_data, dtype=np.float64)
        fraction = DEFAULT_VALIDATION_FRACTION
    num_validation = round(fraction * len(data))
    if num_validation == 0:
        return data, None
    if num_validation >= len(data):
        raise ValueError(
            f"expected at least one training point after holding out {num_validation} of "
            f"{len(data)} for validation, got none: lower `validation_fraction`"
        )
    order = np.asarray(jax.random.permutation(rng_key, len(data)))
    return data[order[num_validation:]], data[order[:num_validation]]


def training_data(
    dataset: Dataset | str | os.PathLike,
    rng_key: jax.Array,
    num_data: int,
    base_scale: float | None = None,
    *,
    preprocess: str = "auto",
    validation_fraction: float | None = None,
) -> TrainingData:
    """Resolve ``dataset``, split it, fit its preprocessing, and choose σ.

    Args:
        dataset: A :class:`~numpyro_ebm.datasets.Dataset`, a built-in name, a data file path,
            or an array of points ``(n, d)`` in raw units.
        rng_key: Key of the draws of a dataset given by its distribution, of the split and of
            the dequantisation noise.
        num_data: Points drawn from a dataset given by its distribution (file data is used as
            given).
        base_scale: σ of the tilt; ``None`` takes the root mean square of the (preprocessed)
            training points' coordinates, so that ρ covers the data.
        preprocess: ``"auto"``, ``"standardize"`` or ``"none"`` (see
            :class:`~numpyro_ebm.training.TrainConfig`).
        validation_fraction: See :class:`~numpyro_ebm.training.TrainConfig`.

    Returns:
        The data.

    Example:
        >>> import jax
        >>> run = training_data("two-modes-2to1", jax.random.key(0), 100)
        >>> run.spec, run.data.shape, run.preprocessing.is_identity, run.validation
        ('two-modes-2to1', (100, 2), True, None)
    """
    rng_key = typed_key(rng_key)
    spec = str(dataset) if isinstance(dataset, str | os.PathLike) else None
    dataset = get_dataset(dataset)
    spec = dataset.name if spec is None else spec
    key_split, key_train, key_validation = (jax.random.fold_in(rng_key, i) for i in (1, 2, 3))
    if dataset.data is None:
        raw = np.asarray(dataset.sample(rng_key, num_data), dtype=np.float32)
        raw_validation = None
        if validation_fraction:
            num_validation = max(1, round(validation_fraction * num_data))
            raw_validation = np.asarray(dataset.sample(key_validation, num_validation))
    else:
        raw, raw_validation = _split(dataset, key_split, validation_fraction)
    if raw.shape[0] <= raw.shape[1]:
        warn_user(
            f"{spec!r} has {raw.shape[0]} training points of dimension {raw.shape[1]}: no "
            "more points than dimensions. Is the array transposed? Points are rows, (n, d)."
        )
    if preprocess == "none" or (preprocess == "auto" and dataset.data is None):
        preprocessing = Preprocessing.identity(raw.shape[1])
    else:
        dequantize = None if preprocess == "auto" else False
        preprocessing = Preprocessing.fit(raw, dequantize=dequantize, rng_key=key_train)
    if dataset.data is not None and not preprocessing.dequantize:
        _warn_if_discrete_columns(raw, spec)
    data = preprocessing.transform(raw, key_train)
    validation = None
    if raw_validation is not None:
        validation = jnp.asarray(preprocessing.transform(raw_validation, key_validation))
    if base_scale is None:
        base_scale = float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
        if not base_scale > 0:
            raise ValueError(
                f"expected training data that varies, got {len(raw)} training points of "
                f"{spec!r} that are all the same point: there is no density to learn"
            )
    _check_no_constant_column(data, spec)
    if preprocess == "none":
        _warn_if_far_from_origin(data, spec)
    return TrainingData(
        dataset, spec, jnp.asarray(data), float(base_scale), preprocessing, validation
    )


def _check_no_constant_column(data: np.ndarray, spec: str) -> None:
    """Refuse training points with a coordinate that never varies (after preprocessing).

    A density has no width along such a coordinate: the model's log-likelihood there grows
    without bound as it learns, and every validation looks like a new best.
    """
    data = np.asarray(data)
    constant = np.flatnonzero(np.all(data == data[:1], axis=0))
    if len(data) > 1 and 0 < len(constant) < data.shape[1]:
        shown = ", ".join(str(int(column)) for column in constant[:10])
        more = f" and {len(constant) - 10} more" if len(constant) > 10 else ""
        raise ValueError(
            f"expected every coordinate of {spec!r} to vary, got column(s) {shown}{more} "
            f"constant over its {len(data)} training points: a density has no width there "
            "(its log-likelihood grows without bound). Drop those columns."
        )


#: Distinct integer values up to which a column of data that are not dequantised gets a warning.
_FEW_VALUES = 20


def _warn_if_discrete_columns(raw: np.ndarray, spec: str) -> None:
    """Warn of columns that take a few integer values only, in data that are not dequantised.

    A density can pile up on those values: a 0/1 column among four continuous ones took the
    validation log-likelihood from -7.2 to -4.6 and rising under the default sampler, each
    epoch a new best, where the exact value is about -7.25 (constant columns are refused).
    """
    columns = np.asarray(raw).T
    counts = {i: len(np.unique(c)) for i, c in enumerate(columns) if is_integer_valued(c)}
    discrete = [(column, count) for column, count in counts.items() if 1 < count <= _FEW_VALUES]
    if discrete:
        shown = ", ".join(f"{column} ({count} values)" for column, count in discrete[:10])
        warn_user(
            f"column(s) {shown} of {spec!r} take only a few integer values, and the data are "
            "not dequantised: the density can pile up on those values, and the validation "
            "log-likelihood then rises without the model getting better. Drop those columns, "
            "or add U[0, 1) noise to them (all-integer data are dequantised by "
            "preprocess='auto')."
        )


#: Distance of the data from the origin, in units of their spread, above which untransformed
#: data get a warning: the tilt ρ = N(0, σ²) and the walkers' start are then far wider than them.
_FAR_FROM_ORIGIN = 10.0


def _warn_if_far_from_origin(data: np.ndarray, spec: str) -> None:
    """Warn when data kept in raw units (``preprocess="none"``) sit far from the origin.

    σ is the data's root mean square, so data at 500 ± 5 get σ ≈ 500: ρ and the walkers that
    start from it spread 100 times wider than the data, which the EBM and the samplers must
    first learn to leave.
    """
    data = np.asarray(data, dtype=np.float64)
    spread = float(np.sqrt(np.mean(np.var(data, axis=0))))
    distance = float(np.linalg.norm(np.mean(data, axis=0)))
    if spread > 0 and distance > _FAR_FROM_ORIGIN * spread:
        warn_user(
            f"the training data of {spec!r} sit {distance / spread:.0f} of their spreads from "
            "the origin with preprocess='none': the tilt ρ = N(0, σ²) and the walkers' start "
            "are far wider than the data; preprocess='standardize' centres and scales them "
            "(and every output is still in raw units)"
        )
