"""Datasets with known densities for training and measuring EBMs, and data read from files.

The built-in datasets are the experiments of Grenioux, Moulines & Gabrié (2023), arXiv:2306.00684,
§4 (see ``METHOD.md`` §4): each has an exact normalised ``log_prob``, exact ``sample`` draws, and,
where its modes are points, the true mode centres and weights that the zone-weight metrics of
:mod:`numpyro_ebm.metrics` compare against. Data read from a ``.npy`` or ``.csv`` file has none of
these: only ``data`` (read by :mod:`numpyro_ebm.data_files`).

Built-ins (N(mu, v I) has *variance* v):

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
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from numpyro_ebm._checks import typed_key
from numpyro_ebm.data_files import SUPPORTED_SUFFIXES, load_data, validate_data

__all__ = ["Dataset", "get_dataset", "list_datasets", "load_data", "validate_data"]


# Bounds of the built-ins cover every mode centre with a margin of this many of the largest
# component standard deviations: the Gaussian mass outside 6 sigma per axis is 2e-9, below float32
# resolution of a density that integrates to 1.
_BOUNDS_MARGIN_STDS = 6.0

# A file dataset's bounds extend the data's range by this fraction on each side, so a 2-D grid over
# them shows the data with room around it (a plotting choice, not a statistical one).
_FILE_BOUNDS_MARGIN = 0.1

# The rings density has an integrable 1/r singularity at the origin. Radii below this floor are
# evaluated at the floor: the mass of the disc r < 1e-6 is about p_r(0) * 1e-6 ~ 3e-16, and the
# capped value there (log density ~ -10) stays far below the rings' peak (~ -2.2), so grid
# normalisations in metrics.py stay finite and exact to float precision.
_RINGS_RADIUS_FLOOR = 1e-6


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset: a built-in with a known density, or samples read from a file.

    Built-ins come from :func:`get_dataset` by name; they have ``log_prob`` and ``sample`` and no
    ``data``. A file dataset has ``data`` and ``None`` for ``log_prob``, ``sample``,
    ``mode_means`` and ``mode_weights``. Instances pickle (the callables are bound methods of
    small parameter classes) and are jitted.

    Attributes:
        name: Built-in name, or the file's stem.
        dim: Dimension d of a point.
        bounds: ``(low, high)`` per axis, a box covering the data with a margin (for 2-D grids).
        log_prob: Exact normalised log density, ``(n, d) -> (n,)``, jittable; ``None`` for files.
        sample: ``sample(key, n) -> (n, d)`` exact draws, jittable with ``n`` static; ``None`` for
            files.
        mode_means: True mode centres, shape ``(k, d)``; ``None`` where modes are not points
            (``rings``) or unknown (files).
        mode_weights: True mode weights, shape ``(k,)``, summing to 1; ``None`` as ``mode_means``.
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
        """Whether the dataset has an exact density (``log_prob`` and ``sample``)."""
        return self.log_prob is not None


# ---------------------------------------------------------------------------------------------
# Densities. The maths lives in module-level jitted functions (fast outside jit, inlined inside
# one); small frozen parameter classes bind their arrays, so a Dataset's callables are bound
# methods, which pickle.


def _check_points(x: jax.Array, dim: int) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected points of shape (n, {dim}), got shape {x.shape}")
    return x


@jax.jit
def _mixture_log_prob(
    x: jax.Array, means: jax.Array, stds: jax.Array, weights: jax.Array
) -> jax.Array:
    dim = means.shape[1]
    sq_dist = jnp.sum((x[:, None, :] - means[None]) ** 2, axis=-1)  # (n, k)
    log_component = (
        -0.5 * sq_dist / stds**2 - dim * jnp.log(stds) - 0.5 * dim * math.log(2 * math.pi)
    )
    return logsumexp(log_component + jnp.log(weights), axis=-1)


@functools.partial(jax.jit, static_argnums=1)
def _mixture_sample(
    key: jax.Array, n: int, means: jax.Array, stds: jax.Array, weights: jax.Array
) -> jax.Array:
    component_key, noise_key = jax.random.split(key)
    components = jax.random.categorical(component_key, jnp.log(weights), shape=(n,))
    noise = jax.random.normal(noise_key, (n, means.shape[1]))
    return means[components] + stds[components, None] * noise


@dataclass(frozen=True, eq=False)
class _GaussianMixture:
    """sum_i w_i N(mu_i, sigma_i^2 I): means (k, d), stds (k,), weights (k,)."""

    means: np.ndarray
    stds: np.ndarray
    weights: np.ndarray

    def log_prob(self, x: jax.Array) -> jax.Array:
        x = _check_points(x, self.means.shape[1])
        return _mixture_log_prob(x, self.means, self.stds, self.weights)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        return _mixture_sample(typed_key(key), n, self.means, self.stds, self.weights)


@jax.jit
def _rings_log_prob(
    x: jax.Array, centres: jax.Array, std: jax.Array, weights: jax.Array
) -> jax.Array:
    radius = jnp.maximum(jnp.linalg.norm(x, axis=-1), _RINGS_RADIUS_FLOOR)
    # Folded mixture: the density of |R| at r > 0 is p_R(r) + p_R(-r).
    signed_centres = jnp.concatenate([centres, -centres])
    log_weights = jnp.log(jnp.concatenate([weights, weights]))
    log_component = (
        -0.5 * ((radius[:, None] - signed_centres) / std) ** 2
        - jnp.log(std)
        - 0.5 * math.log(2 * math.pi)
    )
    log_radius_density = logsumexp(log_component + log_weights, axis=-1)
    # Polar change of variables: dx dy = r dr dtheta, with theta uniform of density 1 / (2 pi).
    return log_radius_density - jnp.log(2 * math.pi * radius)


@functools.partial(jax.jit, static_argnums=1)
def _rings_sample(
    key: jax.Array, n: int, centres: jax.Array, std: jax.Array, weights: jax.Array
) -> jax.Array:
    component_key, noise_key, angle_key = jax.random.split(key, 3)
    components = jax.random.categorical(component_key, jnp.log(weights), shape=(n,))
    radius = jnp.abs(centres[components] + std * jax.random.normal(noise_key, (n,)))
    angle = jax.random.uniform(angle_key, (n,), maxval=2 * math.pi)
    return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=-1)


@dataclass(frozen=True, eq=False)
class _Rings:
    """Radius ``|R|`` with R ~ sum_i w_i N(c_i, s^2), angle uniform on [0, 2 pi), in 2-D."""

    centres: np.ndarray
    std: float
    weights: np.ndarray

    def log_prob(self, x: jax.Array) -> jax.Array:
        return _rings_log_prob(_check_points(x, 2), self.centres, self.std, self.weights)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        return _rings_sample(typed_key(key), n, self.centres, self.std, self.weights)


def _mixture(name: str, means: np.ndarray, stds: np.ndarray, weights: np.ndarray) -> Dataset:
    means = np.asarray(means, dtype=float)
    stds = np.broadcast_to(np.asarray(stds, dtype=float), means.shape[:1]).copy()
    weights = np.asarray(weights, dtype=float)
    margin = _BOUNDS_MARGIN_STDS * float(stds.max())
    bounds = tuple(
        (float(lo) - margin, float(hi) + margin)
        for lo, hi in zip(means.min(axis=0), means.max(axis=0), strict=True)
    )
    density = _GaussianMixture(means, stds, weights)
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
    density = _Rings(centres=np.arange(1.0, 5.0), std=0.15, weights=np.full(4, 0.25))
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


def list_datasets() -> list[str]:
    """Names of the built-in datasets.

    Returns:
        The names :func:`get_dataset` accepts, in the order of METHOD.md §4.

    Example:
        >>> list_datasets()[:3]
        ['two-modes-2to1', 'eight-gaussians', 'rings']
    """
    return list(_BUILTINS)


def _file_dataset(path: Path) -> Dataset:
    data = load_data(path)
    low, high = data.min(axis=0), data.max(axis=0)
    # A constant column has zero range: give it a unit-wide margin instead.
    margin = np.where(high > low, _FILE_BOUNDS_MARGIN * (high - low), 0.5)
    bounds = tuple(
        (float(lo), float(hi)) for lo, hi in zip(low - margin, high + margin, strict=True)
    )
    return Dataset(name=path.stem, dim=data.shape[1], bounds=bounds, data=data)


def get_dataset(name_or_path: str | os.PathLike) -> Dataset:
    """Build a built-in dataset by name, or read one from a ``.npy`` / ``.csv`` file.

    Args:
        name_or_path: One of :func:`list_datasets` (METHOD.md §4), or the path of a data file.

    Returns:
        The dataset. A built-in has exact ``log_prob`` and ``sample``; a file dataset has ``data``.

    Raises:
        ValueError: If the name is neither a built-in nor a path with a supported extension, or
            the file's data is invalid.
        FileNotFoundError: If a path with a supported extension does not exist.

    Example:
        >>> ds = get_dataset("eight-gaussians")
        >>> x = ds.sample(jax.random.key(0), 3)
        >>> x.shape, ds.log_prob(x).shape
        ((3, 2), (3,))
    """
    if isinstance(name_or_path, str) and name_or_path in _BUILTINS:
        return _BUILTINS[name_or_path]()
    path = Path(name_or_path)
    if path.suffix or path.exists():
        return _file_dataset(path)
    raise ValueError(
        f"expected a built-in dataset name (one of {list_datasets()}) or a path to a "
        f"{' or '.join(SUPPORTED_SUFFIXES)} file, got {str(name_or_path)!r}"
    )
