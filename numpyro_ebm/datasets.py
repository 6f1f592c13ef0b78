"""Datasets for training and measuring EBMs: known densities, real data, and data files.

The built-in datasets with a known density (``list_datasets("density")``) are the experiments of
Grenioux, Moulines & Gabrié (2023), arXiv:2306.00684, §4 (see ``METHOD.md`` §4): each has an exact
normalised ``log_prob``, exact ``sample`` draws, and, where its modes are points, the true mode
centres and weights that the zone-weight metrics of :mod:`numpyro_ebm.metrics` compare against.
The real built-ins (``list_datasets("real")``, :mod:`numpyro_ebm.real_datasets`) and data read
from a ``.npy`` or ``.csv`` file have none of these: they have ``data`` in raw units (read by
:mod:`numpyro_ebm.data_files` for files), and the real ones also fixed validation and test splits.

Built-ins with a known density (N(mu, v I) has *variance* v):

- ``two-modes-2to1``: (1/3) N(-1.5 * 1, 0.05 I) + (2/3) N(1.5 * 1, 0.1 I) in 2-D.
- ``eight-gaussians``: equal mixture of N(mu_k, 0.15^2 I), mu_k on the unit circle at angle
  2 pi k / 8.
- ``rings``: radius ``|R|`` with R ~ (1/4) sum_{i=0..3} N(i + 1, 0.15^2), uniform angle. The density
  is ``log p(|R| = r) - log(2 pi r)`` with the folded radius density p(r) = p_R(r) + p_R(-r),
  exact and normalised; below r = 1e-6 it is evaluated at r = 1e-6 to keep it finite (mass
  affected ~3e-16).
  Its modes are rings, not points: ``mode_means`` and ``mode_weights`` are ``None``.
- ``four-modes``: weights (0.1, 0.2, 0.3, 0.4), N(mu_i, 0.05 I), mu_i = (-3, 0), (-1, 0), (1, 0),
  (3, 0).
- ``gmm-16``, ``gmm-32``, ``gmm-64``: equal mixture of N(0.5919 s_i, I) in d = 16, 32, 64 with sign
  patterns s = (1, ..., 1), its negative, (-1, ..., -1, 1, ..., 1) (halves) and its negative.

Real built-ins, from files bundled with scikit-learn (``pip install "numpyro-ebm[real]"``), raw
float64, in fixed disjoint splits (80/10/10 of the rows of the tables, disjoint image regions for
``patches``; details in :mod:`numpyro_ebm.real_datasets`):

=================  ===  ======================  ===============================================
name               d    train / valid. / test   what it tests
=================  ===  ======================  ===============================================
``digits``         64   1439 / 179 / 179        integer pixel levels 0..16, 10 classes
``digits-2to1``    64   225 / 21 / 21           mode weights 2:1 (digits 0 and 1), ``classify``
``breast-cancer``  30   457 / 56 / 56           correlated measurements on mixed scales
``wine``           13   144 / 17 / 17           few points (overfitting), mixed scales
``patches``        64   20000 / 2000 / 2000     natural-image statistics, levels 0..255
=================  ===  ======================  ===============================================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from numpyro_ebm._densities import GaussianMixture, Rings
from numpyro_ebm.data_files import SUPPORTED_SUFFIXES, load_data, validate_data

__all__ = [
    "ARRAY_DATASET_NAME",
    "DATASET_KINDS",
    "Dataset",
    "get_dataset",
    "list_datasets",
    "load_data",
    "samples_dataset",
    "validate_data",
]


# Bounds of the built-ins cover every mode centre with a margin of this many of the largest
# component standard deviations: the Gaussian mass outside 6 sigma per axis is 2e-9, below float32
# resolution of a density that integrates to 1.
_BOUNDS_MARGIN_STDS = 6.0

# A file dataset's bounds extend the data's range by this fraction on each side, so a 2-D grid over
# them shows the data with room around it (a plotting choice, not a statistical one).
_FILE_BOUNDS_MARGIN = 0.1


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset: a built-in with a known density, a real built-in, or samples read from a file.

    Built-ins come from :func:`get_dataset` by name. Those with a known density have
    ``log_prob`` and ``sample`` and no ``data``. Real built-ins and file datasets have ``data``
    (real ones also ``validation_data`` and ``test_data``) and ``None`` for ``log_prob``,
    ``sample`` and ``mode_means``. Instances pickle (the callables are bound methods of small
    parameter classes, or small frozen classes with ``__call__``).

    Attributes:
        name: Built-in name, or the file's stem.
        dim: Dimension d of a point.
        bounds: ``(low, high)`` per axis, a box covering the data with a margin (for 2-D grids).
        log_prob: Exact normalised log density, ``(n, d) -> (n,)``, jittable; ``None`` for files.
        sample: ``sample(key, n) -> (n, d)`` exact draws, jittable with ``n`` static; ``None`` for
            files.
        mode_means: True mode centres, shape ``(k, d)``; ``None`` where modes are not points
            (``rings``) or unknown (files).
        mode_weights: True mode weights, shape ``(k,)``, summing to 1; ``None`` as ``mode_means``,
            except for data whose modes are classes (``digits-2to1``), where ``classify``
            assigns points to them.
        data: The (training) points of a dataset given by samples, shape ``(n, d)``, in raw
            units; ``None`` for built-ins with a known density.
        validation_data: Held-out points for validation during training, or ``None``.
        test_data: Held-out points for the final evaluation, or ``None``.
        classify: For data whose modes are classes (``digits-2to1``): a function from raw
            points ``(n, d)`` to class indices ``(n,)`` into ``mode_weights``; else ``None``.

    Example:
        >>> ds = get_dataset("four-modes")
        >>> ds.dim, ds.mode_weights.tolist()
        (2, [0.1, 0.2, 0.3, 0.4])
    """

    name: str
    dim: int
    bounds: tuple[tuple[float, float], ...]
    log_prob: Callable[[jax.Array], jax.Array] | None = None
    sample: Callable[[jax.Array, int], jax.Array] | None = None
    mode_means: np.ndarray | None = None
    mode_weights: np.ndarray | None = None
    data: np.ndarray | None = None
    validation_data: np.ndarray | None = None
    test_data: np.ndarray | None = None
    classify: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def is_builtin(self) -> bool:
        """Whether the dataset has an exact density (``log_prob`` and ``sample``).

        ``False`` for the real built-ins (``digits``, ...): like files, they are samples.
        """
        return self.log_prob is not None


def _mixture(name: str, means: np.ndarray, stds: np.ndarray, weights: np.ndarray) -> Dataset:
    means = np.asarray(means, dtype=float)
    stds = np.broadcast_to(np.asarray(stds, dtype=float), means.shape[:1]).copy()
    weights = np.asarray(weights, dtype=float)
    margin = _BOUNDS_MARGIN_STDS * float(stds.max())
    bounds = tuple(
        (float(lo) - margin, float(hi) + margin)
        for lo, hi in zip(means.min(axis=0), means.max(axis=0), strict=True)
    )
    density = GaussianMixture(means, stds, weights)
    return Dataset(
        name=name,
        dim=means.shape[1],
        bounds=bounds,
        log_prob=density.log_prob,
        sample=density.sample,
        mode_means=means,
        mode_weights=weights,
    )


def _rings() -> Dataset:
    # Radius |R| with R ~ (1/4) sum_{i=0..3} N(i + 1, 0.15^2) (METHOD.md §4). Folding R onto
    # r > 0 makes the density exact; the folded mass, P(R < 0) ~ 1e-11, is below float resolution.
    density = Rings(centres=np.arange(1.0, 5.0), std=0.15, weights=np.full(4, 0.25))
    extent = float(density.centres.max()) + _BOUNDS_MARGIN_STDS * density.std
    return Dataset(
        name="rings",
        dim=2,
        bounds=((-extent, extent), (-extent, extent)),
        log_prob=density.log_prob,
        sample=density.sample,
    )


# ---------------------------------------------------------------------------------------------
# The built-ins of METHOD.md §4.


def _two_modes_2to1() -> Dataset:
    # (1/3) N(-1.5 * 1, 0.05 I) + (2/3) N(1.5 * 1, 0.1 I): 0.05 and 0.1 are variances.
    means = np.array([[-1.5, -1.5], [1.5, 1.5]])
    return _mixture("two-modes-2to1", means, np.sqrt([0.05, 0.1]), np.array([1 / 3, 2 / 3]))


def _eight_gaussians() -> Dataset:
    angles = 2 * np.pi * np.arange(8) / 8
    means = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return _mixture("eight-gaussians", means, np.array(0.15), np.full(8, 1 / 8))


def _four_modes() -> Dataset:
    # N(mu_i, 0.05 I) (0.05 is a variance), mu_i evenly spaced on the first axis in [-3, 3].
    means = np.stack([np.linspace(-3.0, 3.0, 4), np.zeros(4)], axis=-1)
    return _mixture("four-modes", means, np.sqrt(np.array(0.05)), np.array([0.1, 0.2, 0.3, 0.4]))


# Offset per coordinate of the high-dimensional modes, from [A] (METHOD.md §4).
_GMM_OFFSET = 0.5919


def _gmm(dim: int) -> Callable[[], Dataset]:
    def build() -> Dataset:
        ones = np.ones(dim)
        half_flip = np.concatenate([-np.ones(dim // 2), np.ones(dim - dim // 2)])
        signs = np.stack([ones, -ones, half_flip, -half_flip])
        return _mixture(f"gmm-{dim}", _GMM_OFFSET * signs, np.array(1.0), np.full(4, 0.25))

    return build


_BUILTINS: dict[str, Callable[[], Dataset]] = {
    "two-modes-2to1": _two_modes_2to1,
    "eight-gaussians": _eight_gaussians,
    "rings": _rings,
    "four-modes": _four_modes,
    "gmm-16": _gmm(16),
    "gmm-32": _gmm(32),
    "gmm-64": _gmm(64),
}


#: What :func:`list_datasets` filters on: every built-in, those with a known density, or the
#: real datasets of :mod:`numpyro_ebm.real_datasets`.
DATASET_KINDS = ("all", "density", "real")
#: Name of a dataset given to :func:`get_dataset` (and so to ``train``) as an array of points.
ARRAY_DATASET_NAME = "array"


def _real_builders() -> dict[str, Callable[[], Dataset]]:
    # Imported here, not at the top: real_datasets builds on Dataset and samples_dataset, defined
    # in this module. Importing it does not import scikit-learn (its builders do).
    from numpyro_ebm.real_datasets import REAL_DATASETS

    return REAL_DATASETS


def list_datasets(kind: str = "all") -> list[str]:
    """Names of the built-in datasets.

    Args:
        kind: ``"density"``: those with an exact ``log_prob`` and ``sample`` (METHOD.md §4);
            ``"real"``: real data bundled with scikit-learn, with ``data`` and fixed splits;
            ``"all"``: both, the density ones first.

    Returns:
        The names :func:`get_dataset` accepts, densities in the order of METHOD.md §4.

    Raises:
        ValueError: If ``kind`` is not one of :data:`DATASET_KINDS`.

    Example:
        >>> list_datasets()[:3]
        ['two-modes-2to1', 'eight-gaussians', 'rings']
        >>> list_datasets("real")[:2]
        ['digits', 'digits-2to1']
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"expected kind to be one of {DATASET_KINDS}, got {kind!r}")
    density = list(_BUILTINS) if kind in ("all", "density") else []
    return density + (list(_real_builders()) if kind in ("all", "real") else [])


def _data_bounds(*arrays: np.ndarray) -> tuple[tuple[float, float], ...]:
    """A box around every point of ``arrays``, widened by a fraction of each axis's range."""
    stacked = np.concatenate(arrays)
    low, high = stacked.min(axis=0), stacked.max(axis=0)
    # A constant column has zero range: give it a unit-wide margin instead.
    margin = np.where(high > low, _FILE_BOUNDS_MARGIN * (high - low), 0.5)
    return tuple((float(lo), float(hi)) for lo, hi in zip(low - margin, high + margin, strict=True))


def samples_dataset(
    name: str,
    data: np.ndarray,
    *,
    validation_data: np.ndarray | None = None,
    test_data: np.ndarray | None = None,
    mode_weights: np.ndarray | None = None,
    classify: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Dataset:
    """A dataset given by samples, with bounds covering all its splits.

    Args:
        name: Its name.
        data: Training points ``(n, d)``, raw units.
        validation_data: Held-out points ``(m, d)`` for validation, or ``None``.
        test_data: Held-out points ``(m, d)`` for the final evaluation, or ``None``.
        mode_weights: Class weights where ``classify`` assigns points to classes.
        classify: Raw points ``(n, d)`` to class indices ``(n,)``, or ``None``.

    Returns:
        The dataset, without ``log_prob`` or ``sample``.

    Raises:
        ValueError: If a split fails :func:`validate_data` or has another dimension than
            ``data``.

    Example:
        >>> ds = samples_dataset("pair", np.array([[0.0], [10.0]]))
        >>> ds.dim, ds.bounds
        (1, ((-1.0, 11.0),))
    """
    data = validate_data(data)
    splits = {"validation_data": validation_data, "test_data": test_data}
    for split, values in splits.items():
        if values is not None:
            splits[split] = values = validate_data(values)
            if values.shape[1] != data.shape[1]:
                raise ValueError(
                    f"expected {split} of dimension {data.shape[1]} like data, got shape "
                    f"{values.shape}"
                )
    held_out = [values for values in splits.values() if values is not None]
    return Dataset(
        name=name,
        dim=data.shape[1],
        bounds=_data_bounds(data, *held_out),
        mode_weights=mode_weights,
        data=data,
        classify=classify,
        **splits,
    )


def get_dataset(name_or_path: str | os.PathLike | np.ndarray | jax.Array | Dataset) -> Dataset:
    """Build a built-in dataset by name, read one from a ``.npy`` / ``.csv`` file, or wrap points.

    Args:
        name_or_path: One of :func:`list_datasets`, the path of a data file, an array of
            points ``(n, d)`` in raw units (named ``"array"``), or a dataset (returned as is).

    Returns:
        The dataset. A built-in with a known density has exact ``log_prob`` and ``sample``; a real
        built-in has ``data``, ``validation_data`` and ``test_data``; a file dataset has ``data``.

    Raises:
        ValueError: If the name is neither a built-in nor a path with a supported extension, or
            the file's (or array's) data is invalid.
        TypeError: If ``name_or_path`` is none of these kinds.
        FileNotFoundError: If a path with a supported extension does not exist.
        ImportError: If the name is a real dataset and scikit-learn is not installed.

    Example:
        >>> ds = get_dataset("eight-gaussians")
        >>> x = ds.sample(jax.random.key(0), 3)
        >>> x.shape, ds.log_prob(x).shape
        ((3, 2), (3,))
    """
    if isinstance(name_or_path, Dataset):
        return name_or_path
    if isinstance(name_or_path, np.ndarray | jax.Array):
        return samples_dataset(ARRAY_DATASET_NAME, np.asarray(name_or_path))
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(
            "expected a built-in dataset name, a data file path, an array of points (n, d) or "
            f"a Dataset, got {type(name_or_path).__name__}"
        )
    if isinstance(name_or_path, str) and name_or_path in _BUILTINS:
        return _BUILTINS[name_or_path]()
    if isinstance(name_or_path, str) and name_or_path in _real_builders():
        return _real_builders()[name_or_path]()
    path = Path(name_or_path)
    if path.suffix or path.exists():
        return samples_dataset(path.stem, load_data(path))
    raise ValueError(
        f"expected a built-in dataset name (one of {list_datasets()}) or a path to a "
        f"{' or '.join(SUPPORTED_SUFFIXES)} file, got {str(name_or_path)!r}"
    )
