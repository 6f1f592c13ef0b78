"""Energy as an out-of-distribution (OOD) score: AUROC against held-out data under standard shifts.

An energy-based model assigns low energy to data like its training data, so the energy itself
is a score for "how out-of-distribution is this point" (higher = more OOD). Its quality is the
area under the ROC curve (AUROC) for telling shifted points (label 1) from held-out
in-distribution points (label 0): 1 when every shifted point has a higher energy than every
held-out point, 1/2 for a score that cannot tell them apart, 0 when the order is reversed.

The standard shifts of :func:`shifted_data` follow the OOD benchmarks of the EBM literature
(Grathwohl et al. 2020, "Your classifier is secretly an energy based model", §5; Du & Mordatch
2019, "Implicit generation and generalization in energy-based models", §4.3): data with its
structure destroyed but its values kept (pixel-shuffled), a symmetry the data lacks (flipped),
and noise with the data's moments or range. Another dataset of the same dimension is a further
shift (``others`` of :func:`ood_aurocs`).

Example:
    >>> import jax, jax.numpy as jnp
    >>> heldout = jax.random.normal(jax.random.key(0), (200, 4))
    >>> scores = ood_aurocs(lambda x: 0.5 * jnp.sum(x**2, axis=-1), heldout,
    ...                     jax.random.key(1), others={"far": heldout + 3.0})
    >>> sorted(scores)
    ['far', 'flipped', 'noise', 'pixel-shuffled', 'uniform']
    >>> scores["far"] > 0.99, abs(scores["pixel-shuffled"] - 0.5) < 0.01  # norm: blind to it
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from numpyro_ebm._checks import typed_key

__all__ = ["SHIFTS", "auroc", "ood_aurocs", "shifted_data"]

#: Names of the shifts made by :func:`shifted_data`, in the order of its result.
SHIFTS = ("pixel-shuffled", "flipped", "noise", "uniform")


def _scores_1d(name: str, scores: Any) -> np.ndarray:
    """``scores`` as a non-empty 1-D float64 array, or a ``ValueError`` naming ``name``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"expected `{name}` of shape (n,) with n >= 1, got shape {scores.shape}")
    return scores


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` in increasing order, tied values sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    # A group of `c` tied values after `s` smaller ones holds ranks s+1..s+c, mean s + (c+1)/2.
    smaller = np.cumsum(counts) - counts
    return (smaller + (counts + 1) / 2.0)[inverse]


def auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve of a score that is higher for out-of-distribution points.

    Equals ``P(s_out > s_in) + P(s_out = s_in) / 2`` over all pairs of an in-distribution and
    an OOD point, computed exactly from the Mann–Whitney U statistic of the OOD scores' ranks
    (Hanley & McNeil 1982, "The meaning and use of the area under a ROC curve"): with average
    ranks for ties, ``U = R_out - n_out (n_out + 1) / 2`` and ``AUROC = U / (n_in n_out)``.
    This takes ``O(n log n)`` for ``n = n_in + n_out`` points.

    A non-finite score of an OOD point (NaN or ±inf: an energy that overflowed, or a model
    evaluated where it is undefined) counts as maximally OOD: above every in-distribution score,
    tied with the other non-finite OOD scores. A non-finite in-distribution score is an error,
    since it says the model fails on its own data.

    Args:
        scores_in: Scores (energies) of in-distribution points, shape ``(n_in,)``, finite.
        scores_out: Scores of OOD points, shape ``(n_out,)``.

    Returns:
        The AUROC in ``[0, 1]``.

    Raises:
        ValueError: If either input is not a non-empty 1-D array, or ``scores_in`` is not
            finite.

    Example:
        >>> auroc([0.0, 1.0], [2.0, 3.0]), auroc([2.0, 3.0], [0.0, 1.0])
        (1.0, 0.0)
        >>> auroc([0.0, 1.0], [1.0, 2.0])  # pairs: 1 + 1 + 1/2 (the tie) + 1, over 4
        0.875
        >>> auroc([0.0, 1.0], [float("nan"), -float("inf")])
        1.0
    """
    scores_in = _scores_1d("scores_in", scores_in)
    scores_out = _scores_1d("scores_out", scores_out)
    if not np.all(np.isfinite(scores_in)):
        bad = int(np.sum(~np.isfinite(scores_in)))
        raise ValueError(
            f"expected finite `scores_in` (energies of in-distribution points), got {bad} "
            f"non-finite of {scores_in.size}"
        )
    scores_out = np.where(np.isfinite(scores_out), scores_out, np.inf)
    n_in, n_out = scores_in.size, scores_out.size
    ranks = _average_ranks(np.concatenate([scores_in, scores_out]))
    u_out = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u_out / (n_in * n_out))


def _points_2d(name: str, x: Any) -> np.ndarray:
    """``x`` as a finite ``(n, d)`` array with ``n, d >= 1``, or a ``ValueError``."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected `{name}` of shape (n, d) with n, d >= 1, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise ValueError(f"expected finite numbers in `{name}`, got dtype {x.dtype}")
    return x


def _check_image_shape(image_shape: Sequence[int] | None, dim: int) -> tuple[int, ...] | None:
    """``image_shape`` as a tuple ``(height, width[, channels])`` of ``dim`` pixels, or None."""
    if image_shape is None:
        return None
    shape = tuple(int(size) for size in image_shape)
    if len(shape) not in (2, 3) or min(shape) < 1 or int(np.prod(shape)) != dim:
        raise ValueError(
            f"expected `image_shape` (height, width) or (height, width, channels) with "
            f"{dim} entries in all, got {tuple(image_shape)}"
        )
    return shape


def _float_dtype(x: np.ndarray) -> np.dtype:
    """The floating dtype of shifted data: ``x``'s own if floating, else float64."""
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)


def pixel_shuffled(x: np.ndarray, rng_key: jax.Array) -> np.ndarray:
    """Each row of ``x`` with its coordinates permuted by its own uniform random permutation.

    Example:
        >>> import jax
        >>> pixel_shuffled(np.array([[1, 2, 3]]), jax.random.key(0)).shape
        (1, 3)
    """
    keys = jax.random.split(typed_key(rng_key), x.shape[0])
    order = jax.vmap(lambda key: jax.random.permutation(key, x.shape[1]))(keys)
    return np.take_along_axis(x, np.asarray(order), axis=1)


def flipped(x: np.ndarray, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Rows of ``x`` flipped left to right as images, or with coordinates reversed if tabular.

    Example:
        >>> flipped(np.array([[1, 2, 3, 4]]), (2, 2)).tolist()
        [[2, 1, 4, 3]]
        >>> flipped(np.array([[1, 2, 3]])).tolist()
        [[3, 2, 1]]
    """
    if image_shape is None:
        return x[:, ::-1]
    images = x.reshape(x.shape[0], *image_shape)
    return images[:, :, ::-1].reshape(x.shape)  # axis 2 of (n, height, width[, channels])


def gaussian_noise(x: np.ndarray, rng_key: jax.Array) -> np.ndarray:
    """Independent Gaussian coordinates with the per-coordinate mean and std of ``x``.

    Example:
        >>> import jax
        >>> gaussian_noise(np.zeros((2, 3)), jax.random.key(0)).tolist()  # std 0: the mean
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    standard = np.asarray(jax.random.normal(typed_key(rng_key), x.shape), dtype=np.float64)
    noise = x.mean(axis=0) + x.std(axis=0) * standard
    return noise.astype(_float_dtype(x))


def uniform_noise(x: np.ndarray, rng_key: jax.Array) -> np.ndarray:
    """Independent uniform coordinates over the per-coordinate range ``[min, max)`` of ``x``.

    Example:
        >>> import jax
        >>> u = uniform_noise(np.array([[0.0, 5.0], [1.0, 7.0]]), jax.random.key(0))
        >>> bool(np.all((u >= [0.0, 5.0]) & (u <= [1.0, 7.0])))
        True
    """
    standard = np.asarray(jax.random.uniform(typed_key(rng_key), x.shape), dtype=np.float64)
    low, high = x.min(axis=0), x.max(axis=0)
    return (low + (high - low) * standard).astype(_float_dtype(x))


def shifted_data(
    x: Any, rng_key: jax.Array, *, image_shape: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """The standard distribution shifts of held-out data, each of the data's shape.

    * ``"pixel-shuffled"``: each point's coordinates permuted by its own random permutation
      (values kept, structure destroyed);
    * ``"flipped"``: each image flipped left to right when ``image_shape`` is given, else each
      point's coordinates reversed;
    * ``"noise"``: independent Gaussian coordinates with the data's per-coordinate mean and
      standard deviation;
    * ``"uniform"``: independent uniform coordinates over the data's per-coordinate range.

    Args:
        x: Held-out points, shape ``(n, d)``, finite.
        rng_key: PRNG key, typed (``jax.random.key``) or raw (``jax.random.PRNGKey``).
        image_shape: ``(height, width)`` or channels-last ``(height, width, channels)`` of
            each point read as an image (``d`` entries in all), or ``None`` for tabular data.

    Returns:
        A dict from the names in :data:`SHIFTS` to arrays of shape ``(n, d)``; the shuffled and
        flipped ones keep ``x``'s dtype, the noise ones are floating.

    Raises:
        ValueError: If ``x`` is not a finite ``(n, d)`` array or ``image_shape`` does not hold
            ``d`` entries.
        TypeError: If ``rng_key`` is not a PRNG key.

    Example:
        >>> import jax
        >>> x = np.arange(8.0).reshape(2, 4)
        >>> shifts = shifted_data(x, jax.random.PRNGKey(0), image_shape=(2, 2))
        >>> {name: shifted.shape for name, shifted in shifts.items()}
        {'pixel-shuffled': (2, 4), 'flipped': (2, 4), 'noise': (2, 4), 'uniform': (2, 4)}
        >>> shifts["flipped"].tolist()
        [[1.0, 0.0, 3.0, 2.0], [5.0, 4.0, 7.0, 6.0]]
    """
    x = _points_2d("x", x)
    image_shape = _check_image_shape(image_shape, x.shape[1])
    shuffle_key, noise_key, uniform_key = jax.random.split(typed_key(rng_key), 3)
    return {
        "pixel-shuffled": pixel_shuffled(x, shuffle_key),
        "flipped": flipped(x, image_shape),
        "noise": gaussian_noise(x, noise_key),
        "uniform": uniform_noise(x, uniform_key),
    }


def _energies(energy_fn: Callable[[Any], Any], x: np.ndarray, name: str) -> np.ndarray:
    """``energy_fn(x)`` as a ``(n,)`` array, or a ``ValueError`` naming the data set."""
    energies = np.asarray(energy_fn(x))
    if energies.shape != (x.shape[0],):
        raise ValueError(
            f"expected `energy_fn` to map points of shape {x.shape} to energies of shape "
            f"({x.shape[0]},), got shape {energies.shape} on {name!r}"
        )
    return energies


def ood_aurocs(
    energy_fn: Callable[[Any], Any],
    heldout: Any,
    rng_key: jax.Array,
    *,
    image_shape: Sequence[int] | None = None,
    others: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """AUROC of the energy as an OOD score, held-out data against each shift and other data set.

    Args:
        energy_fn: Maps points ``(n, d)`` to their energies ``(n,)`` (-log density up to a
            constant; higher = more OOD).
        heldout: Held-out in-distribution points, shape ``(n, d)``, in the units
            ``energy_fn`` expects.
        rng_key: PRNG key of the shifts (typed or raw).
        image_shape: Image shape of a point, for the left-right flip (see
            :func:`shifted_data`).
        others: Further OOD data sets by name (another dataset), each of shape ``(m, d)``.

    Returns:
        A dict from the names in :data:`SHIFTS`, then those of ``others``, to AUROCs.

    Raises:
        ValueError: If the data have the wrong shapes, a name of ``others`` is a shift's,
            ``energy_fn`` returns the wrong shape, or a held-out energy is not finite.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> heldout = jax.random.normal(jax.random.key(0), (100, 2))
        >>> scores = ood_aurocs(lambda x: jnp.sum(x**2, axis=-1), heldout, jax.random.key(1))
        >>> scores["uniform"] > 0.7  # uniform over the range is wider than the Gaussian
        True
    """
    heldout = _points_2d("heldout", heldout)
    others = dict(others or {})
    clashes = sorted(set(others) & set(SHIFTS))
    if clashes:
        raise ValueError(
            f"expected names in `others` other than the shifts {SHIFTS}, got {clashes}"
        )
    for name, data in others.items():
        data = _points_2d(f"others[{name!r}]", data)
        if data.shape[1] != heldout.shape[1]:
            raise ValueError(
                f"expected `others[{name!r}]` of dimension d = {heldout.shape[1]} (that of "
                f"`heldout`), got shape {data.shape}"
            )
        others[name] = data
    energies_in = _energies(energy_fn, heldout, "heldout")
    datasets = {**shifted_data(heldout, rng_key, image_shape=image_shape), **others}
    return {
        name: auroc(energies_in, _energies(energy_fn, data, name))
        for name, data in datasets.items()
    }
