"""Tests of numpyro_ebm.real_datasets: shapes, raw units, fixed disjoint splits, the classifier."""

import functools
import pickle
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

from numpyro_ebm import real_datasets
from numpyro_ebm.datasets import Dataset, get_dataset, list_datasets
from numpyro_ebm.real_datasets import LinearClassifier, _fit_digit_classifier, _split_indices

REAL = ["digits", "digits-2to1", "breast-cancer", "wine", "patches"]

# name -> (d, (train, validation, test)); tables: n // 10 rows each held out, the rest trains.
SHAPES = {
    "digits": (64, (1439, 179, 179)),
    "digits-2to1": (64, (225, 21, 21)),
    "breast-cancer": (30, (457, 56, 56)),
    "wine": (13, (144, 17, 17)),
    "patches": (64, (20_000, 2_000, 2_000)),
}
TABLES = {"digits": load_digits, "breast-cancer": load_breast_cancer, "wine": load_wine}


@functools.cache
def _dataset(name: str) -> Dataset:
    """One build per dataset for the whole module (arrays are only read)."""
    return get_dataset(name)


def _splits(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return ds.data, ds.validation_data, ds.test_data


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


@functools.cache
def _digit_labels() -> dict[bytes, set[int]]:
    """Each digits image's bytes -> the labels it carries in scikit-learn's file (the oracle)."""
    loaded = load_digits()
    labels: dict[bytes, set[int]] = {}
    for image, label in zip(loaded.data, loaded.target, strict=True):
        labels.setdefault(image.tobytes(), set()).add(int(label))
    return labels


def _true_labels(images: np.ndarray) -> np.ndarray:
    labels = [_digit_labels()[image.tobytes()] for image in images]
    assert all(len(found) == 1 for found in labels)  # no image carries two labels
    return np.array([next(iter(found)) for found in labels])


def _held_out_binary_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 0s and 1s of the digits validation and test splits (never seen by the classifier)."""
    loaded = load_digits()
    _, validation, test = _split_indices(len(loaded.data))
    rows = np.concatenate([validation, test])
    rows = rows[loaded.target[rows] <= 1]
    return loaded.data[rows], loaded.target[rows]


def test_list_datasets_kinds():
    assert list_datasets("real") == REAL
    assert list_datasets()[-len(REAL) :] == REAL
    assert set(list_datasets("density")).isdisjoint(REAL)
    with pytest.raises(ValueError, match=r"expected kind to be one of .* got 'fake'"):
        list_datasets("fake")


@pytest.mark.parametrize("name", REAL)
def test_shapes_dtype_and_bounds(name):
    ds = _dataset(name)
    dim, sizes = SHAPES[name]
    assert ds.name == name and ds.dim == dim
    assert tuple(len(split) for split in _splits(ds)) == sizes
    assert ds.log_prob is None and ds.sample is None and not ds.is_builtin
    low, high = np.array(ds.bounds).T
    for split in _splits(ds):
        assert split.dtype == np.float64 and split.shape[1] == dim
        assert np.all(np.isfinite(split))
        assert np.all(low < split.min(0)) and np.all(high > split.max(0))


@pytest.mark.parametrize("name", REAL)
def test_splits_are_deterministic(name):
    again = get_dataset(name)
    for first, second in zip(_splits(_dataset(name)), _splits(again), strict=True):
        np.testing.assert_array_equal(first, second)


def test_split_indices_are_disjoint_and_cover():
    for num_rows in (178, 569, 1797):
        train, validation, test = _split_indices(num_rows)
        everything = np.concatenate([train, validation, test])
        assert len(validation) == len(test) == num_rows // 10
        np.testing.assert_array_equal(np.sort(everything), np.arange(num_rows))


@pytest.mark.parametrize("name", list(TABLES))
def test_tables_are_raw_rows_of_scikit_learn(name):
    # The three splits together are exactly the file's rows (as a multiset), unstandardised.
    raw = TABLES[name]().data
    rows = np.concatenate(_splits(_dataset(name)))
    np.testing.assert_array_equal(_sorted_rows(rows), _sorted_rows(raw))
    train_rows = _split_indices(len(raw))[0]
    np.testing.assert_array_equal(_dataset(name).data, raw[train_rows])


@pytest.mark.parametrize(("name", "max_level"), [("digits", 16), ("patches", 255)])
def test_pixels_are_integer_levels(name, max_level):
    for split in _splits(_dataset(name)):
        np.testing.assert_array_equal(split, np.round(split))
        assert split.min() >= 0 and split.max() <= max_level
    # Raw, not rescaled: the brightest level occurs in the training split.
    assert _dataset(name).data.max() == max_level


def test_digits_2to1_ratio_in_every_split():
    ds = _dataset("digits-2to1")
    np.testing.assert_allclose(ds.mode_weights, [2 / 3, 1 / 3])
    for split in _splits(ds):
        counts = np.bincount(_true_labels(split), minlength=2)
        assert counts.tolist() == [2 * counts[1], counts[1]] and counts[1] > 0


def test_digits_2to1_splits_are_disjoint():
    train, validation, test = (
        {row.tobytes() for row in split} for split in _splits(_dataset("digits-2to1"))
    )
    assert not train & validation and not train & test and not validation & test


def test_classifier_accuracy_on_held_out_digits():
    images, labels = _held_out_binary_digits()
    accuracy = np.mean(_dataset("digits-2to1").classify(images) == labels)
    # 0 and 1 are linearly separable in 64 pixels; 0.99 allows no error on these 66 images.
    assert accuracy >= 0.99, accuracy


def test_classifier_counts_the_2to1_splits():
    ds = _dataset("digits-2to1")
    for split in _splits(ds):
        np.testing.assert_array_equal(ds.classify(split), _true_labels(split))


def test_accuracy_check_fails_for_broken_classifiers():
    # Negative controls: the same fit on shuffled labels, and the fitted weights with flipped
    # signs, must both fall far below the 0.99 the test above demands.
    loaded = load_digits()
    train = _split_indices(len(loaded.data))[0]
    train = train[loaded.target[train] <= 1]
    shuffled = np.random.default_rng(1).permutation(loaded.target[train])
    images, labels = _held_out_binary_digits()
    chance = _fit_digit_classifier(loaded.data[train], shuffled)
    assert np.mean(chance(images) == labels) < 0.9
    fitted = _dataset("digits-2to1").classify
    flipped = LinearClassifier(-fitted.weights, -fitted.bias)
    assert np.mean(flipped(images) == labels) < 0.1


def test_classifier_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"expected points of shape \(n, 64\), got shape \(3,\)"):
        _dataset("digits-2to1").classify(np.zeros(3))


def test_pickles_and_classifies_without_sklearn(monkeypatch):
    ds = _dataset("digits-2to1")
    restored = pickle.loads(pickle.dumps(ds))
    for split, back in zip(_splits(ds), _splits(restored), strict=True):
        np.testing.assert_array_equal(back, split)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    np.testing.assert_array_equal(restored.classify(ds.test_data), ds.classify(ds.test_data))


def test_patches_pickle():
    restored = pickle.loads(pickle.dumps(_dataset("patches")))
    np.testing.assert_array_equal(restored.test_data, _dataset("patches").test_data)


@pytest.mark.parametrize("name", REAL)
def test_import_error_names_the_extra(monkeypatch, name):
    for module in ("sklearn", "sklearn.datasets", "sklearn.linear_model"):
        monkeypatch.setitem(sys.modules, module, None)
    assert list_datasets("real") == REAL  # listing needs no scikit-learn
    with pytest.raises(ImportError, match=r'scikit-learn.*pip install "numpyro-ebm\[real\]"'):
        get_dataset(name)


def test_region_patches_are_distinct_windows_inside_the_region():
    region = np.arange(20 * 30, dtype=float).reshape(20, 30)  # every pixel value unique
    out = real_datasets._region_patches(region, 50, np.random.default_rng(0))
    assert out.shape == (50, 64)
    rows, cols = np.divmod(out[:, 0], 30)
    assert len(set(out[:, 0])) == 50  # distinct corners
    for patch, row, col in zip(out, rows.astype(int), cols.astype(int), strict=True):
        assert row + 8 <= 20 and col + 8 <= 30
        np.testing.assert_array_equal(patch, region[row : row + 8, col : col + 8].ravel())


def test_grayscale_is_rounded_bt601_luma():
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1, 2.99 + 11.74 + 3.42 = 18.15.
    np.testing.assert_array_equal(real_datasets._grayscale(image), [[76, 150, 29, 18]])
