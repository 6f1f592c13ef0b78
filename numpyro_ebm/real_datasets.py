"""Real datasets from the files bundled with scikit-learn: no download, raw units, fixed splits.

Each builder returns a :class:`~numpyro_ebm.datasets.Dataset` with ``data`` (the training
split), ``validation_data`` and ``test_data``, all float64 ``(n, d)`` in *raw* units (pixel
levels, measurements): standardisation and dequantisation are fitted later, on the training
split, by :mod:`numpyro_ebm.preprocessing`. None has a known density (``log_prob`` and
``sample`` are ``None``). Get them by name through :func:`numpyro_ebm.datasets.get_dataset`;
scikit-learn is imported only when one is built (``pip install "numpyro-ebm[real]"``).

Splits are drawn once with the fixed seed ``_SPLIT_SEED = 0``, so they are the same on every
call and every machine, and are disjoint:

- ``digits``, ``breast-cancer``, ``wine``: a permutation of the rows by
  ``np.random.default_rng(0)``; validation and test take ``n // 10`` rows each, training the rest
  (80/10/10).
- ``digits-2to1``: the digits 0 and 1 of each ``digits`` split: with k = min(#1s, #0s // 2), the
  first 2k 0s and the first k 1s in split order, so class 0 : class 1 = 2 : 1 exactly in every
  split. ``classify`` is a logistic regression (scikit-learn, default L2 penalty C = 1, on
  pixels / 16) fitted on *all* 0s and 1s of the ``digits`` training split, stored as NumPy
  weights, so calling it needs no scikit-learn.
- ``patches``: 8 x 8 patches of the grayscale sample images ``china.jpg`` and ``flower.jpg``
  (427 x 640), gray = round(0.299 R + 0.587 G + 0.114 B) (ITU-R BT.601 luma), levels 0..255.
  Each image is cut into disjoint regions: the left 512 columns for training, the right 128
  columns' top half (rows 0..212) for validation and bottom half (rows 213..426) for test. Patch
  corners are drawn without replacement inside a region, so no pixel of a training patch is in a
  held-out one. Half the patches of each split come from each image.

Example:
    >>> ds = digits()
    >>> ds.dim, ds.data.shape, ds.validation_data.shape, ds.test_data.shape
    (64, (1439, 64), (179, 64), (179, 64))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from numpyro_ebm.datasets import Dataset, samples_dataset

__all__ = [
    "REAL_DATASETS",
    "breast_cancer",
    "digits",
    "digits_2to1",
    "patches",
    "wine",
]

# Seed of every split and patch position: fixed so that splits are identical across calls.
_SPLIT_SEED = 0
# Validation and test each take this fraction of a table's rows (80/10/10).
_HELD_OUT_FRACTION = 0.1

_INSTALL_HINT = 'pip install "numpyro-ebm[real]"'

# Highest pixel level of scikit-learn's digits (4 x 4 blocks of 0/1 bits summed): features are
# divided by it before the logistic fit, so the optimiser sees unit-scale inputs.
_DIGITS_MAX_LEVEL = 16.0

_PATCH_SIZE = 8
# Patches per split (all images together); half come from each of the two images.
_NUM_PATCHES = (20_000, 2_000, 2_000)
# Columns of each image given to the training region; the rest is split into validation (top
# half) and test (bottom half). 512 of 640 columns: 80% of an image's area for training.
_TRAIN_COLUMNS = 512
# ITU-R BT.601 luma weights of R, G, B (the formula of PIL's "L" mode).
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def _sklearn(submodule: str) -> ModuleType:
    """Import ``sklearn.<submodule>``, or say how to install scikit-learn."""
    try:
        return importlib.import_module(f"sklearn.{submodule}")
    except ImportError as error:
        raise ImportError(
            f"the real datasets read files bundled with scikit-learn, which is not installed "
            f"({error}); install it with: {_INSTALL_HINT}"
        ) from error


def _split_indices(num_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint (train, validation, test) row indices, 80/10/10, from the fixed seed."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(num_rows)
    num_held_out = int(num_rows * _HELD_OUT_FRACTION)
    validation, test = order[:num_held_out], order[num_held_out : 2 * num_held_out]
    return order[2 * num_held_out :], validation, test


def _table_dataset(name: str, features: np.ndarray) -> Dataset:
    features = np.asarray(features, dtype=np.float64)
    train, validation, test = (features[rows] for rows in _split_indices(len(features)))
    return samples_dataset(name, train, validation_data=validation, test_data=test)


def digits() -> Dataset:
    """scikit-learn's handwritten digits: 1797 images of 8 x 8 pixels, levels 0..16.

    Returns:
        The dataset, d = 64, splits 1439 / 179 / 179, integer-valued float64 pixels.

    Raises:
        ImportError: If scikit-learn is not installed.

    Example:
        >>> ds = digits()
        >>> ds.name, float(ds.data.min()), float(ds.data.max())
        ('digits', 0.0, 16.0)
    """
    return _table_dataset("digits", _sklearn("datasets").load_digits().data)


def breast_cancer() -> Dataset:
    """The Wisconsin breast-cancer features (569 tumours, 30 measurements; labels dropped).

    Returns:
        The dataset, d = 30, splits 457 / 56 / 56, raw units.

    Raises:
        ImportError: If scikit-learn is not installed.

    Example:
        >>> breast_cancer().data.shape
        (457, 30)
    """
    return _table_dataset("breast-cancer", _sklearn("datasets").load_breast_cancer().data)


def wine() -> Dataset:
    """The UCI wine features (178 wines, 13 chemical measurements; cultivar labels dropped).

    Returns:
        The dataset, d = 13, splits 144 / 17 / 17, raw units.

    Raises:
        ImportError: If scikit-learn is not installed.

    Example:
        >>> wine().data.shape
        (144, 13)
    """
    return _table_dataset("wine", _sklearn("datasets").load_wine().data)


@dataclass(frozen=True, eq=False)
class LinearClassifier:
    """A two-class linear classifier on raw points: class 1 where ``x @ weights + bias > 0``.

    Plain NumPy weights, so a :class:`~numpyro_ebm.datasets.Dataset` holding one pickles and
    classifies without scikit-learn.

    Attributes:
        weights: Shape ``(d,)``.
        bias: Offset of the decision function.

    Example:
        >>> LinearClassifier(np.array([1.0, -1.0]), 0.0)(np.array([[2.0, 1.0], [0.0, 3.0]]))
        array([1, 0])
    """

    weights: np.ndarray
    bias: float

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Class indices ``(n,)`` (0 or 1) of raw points ``(n, d)``."""
        points = np.asarray(points, dtype=np.float64)
        dim = self.weights.shape[0]
        if points.ndim != 2 or points.shape[1] != dim:
            raise ValueError(f"expected points of shape (n, {dim}), got shape {points.shape}")
        return (points @ self.weights + self.bias > 0).astype(np.int64)


def _fit_digit_classifier(images: np.ndarray, labels: np.ndarray) -> LinearClassifier:
    """Logistic regression of ``labels`` (0/1) on raw digit ``images``, as raw-unit weights."""
    linear_model = _sklearn("linear_model")
    # 1000 iterations: lbfgs converges in well under that on 64 unit-scale pixels.
    model = linear_model.LogisticRegression(max_iter=1000)
    model.fit(images / _DIGITS_MAX_LEVEL, labels)
    # Fitted on images / 16: the same decision function on raw images has weights / 16.
    return LinearClassifier(model.coef_[0] / _DIGITS_MAX_LEVEL, float(model.intercept_[0]))


def _two_to_one(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The 0s and 1s of a split, subsampled to 0 : 1 = 2 : 1, in their split order."""
    zeros, ones = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    num_ones = min(len(ones), len(zeros) // 2)
    keep = np.sort(np.concatenate([zeros[: 2 * num_ones], ones[:num_ones]]))
    return images[keep]


def digits_2to1() -> Dataset:
    """Handwritten 0s and 1s of ``digits`` at 2 : 1, a real-data version of a 2:1 bimodal target.

    Returns:
        The dataset, d = 64, splits 225 / 21 / 21 (2 : 1 in each), ``mode_weights`` (2/3, 1/3)
        and ``classify`` mapping raw images to 0 (digit 0) or 1 (digit 1).

    Raises:
        ImportError: If scikit-learn is not installed.

    Example:
        >>> ds = digits_2to1()
        >>> ds.data.shape, round(float(ds.classify(ds.data).mean()), 2)
        ((225, 64), 0.33)
    """
    loaded = _sklearn("datasets").load_digits()
    images, labels = np.asarray(loaded.data, dtype=np.float64), loaded.target
    rows_per_split = _split_indices(len(images))
    splits = [_two_to_one(images[rows], labels[rows]) for rows in rows_per_split]
    train_rows = rows_per_split[0]
    binary = train_rows[labels[train_rows] <= 1]
    return samples_dataset(
        "digits-2to1",
        splits[0],
        validation_data=splits[1],
        test_data=splits[2],
        mode_weights=np.array([2 / 3, 1 / 3]),
        classify=_fit_digit_classifier(images[binary], labels[binary]),
    )


def _grayscale(image: np.ndarray) -> np.ndarray:
    """Integer luma 0..255 of an RGB image ``(h, w, 3)``, as float64."""
    return np.rint(image[..., :3].astype(np.float64) @ _LUMA_WEIGHTS)


def _region_patches(region: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` flattened patches at distinct random corners lying wholly inside ``region``."""
    windows = np.lib.stride_tricks.sliding_window_view(region, (_PATCH_SIZE, _PATCH_SIZE))
    corners = rng.choice(windows.shape[0] * windows.shape[1], size=count, replace=False)
    rows, cols = np.divmod(corners, windows.shape[1])
    return windows[rows, cols].reshape(count, _PATCH_SIZE**2)


def patches() -> Dataset:
    """8 x 8 grayscale patches of scikit-learn's two sample photographs, levels 0..255.

    Returns:
        The dataset, d = 64, splits 20000 / 2000 / 2000 from disjoint image regions (see the
        module docstring), integer-valued float64 pixels.

    Raises:
        ImportError: If scikit-learn or pillow (which reads the JPEGs) is not installed.

    Example:
        >>> ds = patches()
        >>> ds.data.shape, ds.test_data.shape
        ((20000, 64), (2000, 64))
    """
    sklearn_datasets = _sklearn("datasets")
    try:
        images = sklearn_datasets.load_sample_images().images
    except ImportError as error:
        raise ImportError(
            f"the patches dataset reads JPEGs with pillow, which is not installed ({error}); "
            f"install it with: {_INSTALL_HINT}"
        ) from error
    rng = np.random.default_rng(_SPLIT_SEED)
    splits: list[list[np.ndarray]] = [[], [], []]
    for image in images:
        gray = _grayscale(image)
        middle = gray.shape[0] // 2
        regions = (
            gray[:, :_TRAIN_COLUMNS],
            gray[:middle, _TRAIN_COLUMNS:],
            gray[middle:, _TRAIN_COLUMNS:],
        )
        for split, region, total in zip(splits, regions, _NUM_PATCHES, strict=True):
            split.append(_region_patches(region, total // len(images), rng))
    train, validation, test = (np.concatenate(split) for split in splits)
    return samples_dataset("patches", train, validation_data=validation, test_data=test)


#: Builders of the real datasets by name, in the order :func:`~numpyro_ebm.datasets.list_datasets`
#: lists them.
REAL_DATASETS: dict[str, Callable[[], Dataset]] = {
    "digits": digits,
    "digits-2to1": digits_2to1,
    "breast-cancer": breast_cancer,
    "wine": wine,
    "patches": patches,
}
