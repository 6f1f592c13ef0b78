"""Tests of numpyro_ebm.datasets: exact densities, exact draws, file loading, input checks."""

import functools
import math
import pickle
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from numpyro_ebm.datasets import Dataset, get_dataset, list_datasets, load_data, validate_data

# Statistical checks use a normal quantile of 4.5: two-sided false-alarm rate 6.8e-6 per check,
# below 1e-3 over the few hundred checks (coordinates x modes) of this file. Seeds are fixed.
Z = 4.5
NUM_SAMPLES = 20_000

TWO_D = ["two-modes-2to1", "eight-gaussians", "rings", "four-modes"]
HIGH_D = ["gmm-16", "gmm-32", "gmm-64"]
POINT_MODES = ["two-modes-2to1", "eight-gaussians", "four-modes", *HIGH_D]


@functools.cache
def _draws(name: str) -> np.ndarray:
    """NUM_SAMPLES exact draws with a fixed key, shared by the tests (one compile per dataset)."""
    return np.asarray(get_dataset(name).sample(jax.random.key(0), NUM_SAMPLES), dtype=np.float64)


def _midpoint_integral(ds: Dataset, num_points: int) -> float:
    (x_low, x_high), (y_low, y_high) = ds.bounds
    dx, dy = (x_high - x_low) / num_points, (y_high - y_low) / num_points
    x = x_low + (np.arange(num_points) + 0.5) * dx
    y = y_low + (np.arange(num_points) + 0.5) * dy
    points = jnp.asarray(np.stack(np.meshgrid(x, y), axis=-1).reshape(-1, 2))
    density = np.exp(np.asarray(ds.log_prob(points), dtype=np.float64))
    return float(density.sum() * dx * dy)


def test_list_datasets_is_method_table():
    assert list_datasets("density") == TWO_D + HIGH_D


@pytest.mark.parametrize("name", TWO_D)
def test_2d_log_prob_integrates_to_one(name):
    ds = get_dataset(name)
    # 600 cells per axis: the midpoint-rule relative error is about (dx / sigma)^2 / 24 with
    # sigma >= 0.15 and dx <= 9.8 / 600, i.e. <= 5e-4; the mass outside the 6-sigma box is ~2e-9.
    # A lost constant (2 pi, a weight, the radial Jacobian) would be off by far more than 2e-3.
    assert _midpoint_integral(ds, 600) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", POINT_MODES)
def test_log_prob_matches_scipy_mixture(name):
    ds = get_dataset(name)
    x = _draws(name)
    # Independent float64 oracle: SciPy's normal log densities, variances from METHOD.md §4.
    variances = {
        "two-modes-2to1": np.array([0.05, 0.1]),
        "eight-gaussians": np.full(8, 0.15**2),
        "four-modes": np.full(4, 0.05),
    }.get(name, np.ones(4))
    log_component = scipy.stats.norm.logpdf(
        x[:, None, :], ds.mode_means[None], np.sqrt(variances)[None, :, None]
    ).sum(-1)
    oracle = scipy.special.logsumexp(log_component + np.log(ds.mode_weights), axis=1)
    # float32 evaluation: relative error ~1e-6 on log densities of magnitude <= ~100.
    np.testing.assert_allclose(ds.log_prob(x), oracle, rtol=1e-5, atol=1e-4)


def test_mode_parameters_match_method():
    two = get_dataset("two-modes-2to1")
    np.testing.assert_allclose(two.mode_means, [[-1.5, -1.5], [1.5, 1.5]])
    np.testing.assert_allclose(two.mode_weights, [1 / 3, 2 / 3])
    eight = get_dataset("eight-gaussians")
    np.testing.assert_allclose(np.linalg.norm(eight.mode_means, axis=1), 1.0)
    np.testing.assert_allclose(eight.mode_means[2], [0.0, 1.0], atol=1e-12)
    four = get_dataset("four-modes")
    np.testing.assert_allclose(four.mode_means, [[-3, 0], [-1, 0], [1, 0], [3, 0]])
    gmm = get_dataset("gmm-16")
    signs = np.sign(gmm.mode_means)
    np.testing.assert_allclose(np.abs(gmm.mode_means), 0.5919)
    np.testing.assert_array_equal(signs[0], np.ones(16))
    np.testing.assert_array_equal(signs[1], -np.ones(16))
    np.testing.assert_array_equal(signs[2], np.repeat([-1.0, 1.0], 8))
    np.testing.assert_array_equal(signs[3], -signs[2])
    assert get_dataset("rings").mode_means is None


@pytest.mark.parametrize("name", TWO_D + HIGH_D)
def test_sample_contract(name):
    ds = get_dataset(name)
    x = ds.sample(jax.random.key(0), NUM_SAMPLES)
    assert x.shape == (NUM_SAMPLES, ds.dim)
    np.testing.assert_array_equal(x, _draws(name).astype(x.dtype))  # same key, same draws
    assert not np.array_equal(x, ds.sample(jax.random.key(1), NUM_SAMPLES))
    assert bool(jnp.all(jnp.isfinite(ds.log_prob(x))))
    assert len(ds.bounds) == ds.dim
    assert ds.is_builtin and ds.data is None


@pytest.mark.parametrize("name", ["four-modes", "rings"])
def test_jit_equals_eager(name):
    # Both callables are jitted internally; check they also trace inside an outer jit, with n
    # static, and agree with the direct call.
    ds = get_dataset(name)
    key = jax.random.key(0)

    @jax.jit
    def draw_and_score(key):
        x = ds.sample(key, 100)
        return x, ds.log_prob(x)

    x, log_prob = draw_and_score(key)
    np.testing.assert_allclose(x, ds.sample(key, 100), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(log_prob, ds.log_prob(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", POINT_MODES)
def test_sample_zone_fractions_match_mode_weights(name):
    ds = get_dataset(name)
    x = _draws(name)
    zones = np.argmin(((x[:, None] - ds.mode_means[None]) ** 2).sum(-1), axis=1)
    fractions = np.bincount(zones, minlength=len(ds.mode_weights)) / NUM_SAMPLES
    # Zone mass equals mode weight: modes are >= 4.5 sigma from a zone border, or (eight-gaussians,
    # gmm-d) the leaks cancel by symmetry. Fractions are then binomial(n, w) / n.
    tolerance = Z * np.sqrt(ds.mode_weights * (1 - ds.mode_weights) / NUM_SAMPLES)
    assert np.all(np.abs(fractions - ds.mode_weights) <= tolerance), (fractions, ds.mode_weights)


@pytest.mark.parametrize("name", HIGH_D)
def test_high_dim_sample_moments(name):
    ds = get_dataset(name)
    x = _draws(name)
    mean = ds.mode_weights @ ds.mode_means  # = 0 by symmetry of the sign patterns
    # Per coordinate: a mixture of N(+-a, 1) with equal weights, variance 1 + a^2.
    variance = 1.0 + 0.5919**2
    assert np.all(np.abs(x.mean(0) - mean) <= Z * np.sqrt(variance / NUM_SAMPLES))
    # Sample variance: standard error sqrt((mu4 - sigma^4) / n), mu4 = 3 + 6 a^2 + a^4 for
    # the mixture of N(+-a, 1).
    a2 = 0.5919**2
    variance_se = np.sqrt((3 + 6 * a2 + a2**2 - variance**2) / NUM_SAMPLES)
    assert np.all(np.abs(x.var(0) - variance) <= Z * variance_se)


def test_rings_radius_fractions():
    x = _draws("rings")
    radius = np.linalg.norm(x, axis=1)
    # Rings at radii 1..4 with std 0.15, equal weights: the nearest ring radius picks the zone, and
    # leaks across a border (3.3 sigma away) cancel between neighbours, so each zone holds 1/4.
    ring = np.clip(np.rint(radius), 1, 4).astype(int) - 1
    fractions = np.bincount(ring, minlength=4) / NUM_SAMPLES
    assert np.all(np.abs(fractions - 0.25) <= Z * np.sqrt(0.25 * 0.75 / NUM_SAMPLES))
    angle = np.arctan2(x[:, 1], x[:, 0])
    # Uniform angle on (-pi, pi]: mean 0, variance pi^2 / 3.
    assert abs(angle.mean()) <= Z * math.pi / math.sqrt(3 * NUM_SAMPLES)


def test_rings_log_prob_finite_at_origin_and_radial():
    ds = get_dataset("rings")
    at_origin = float(ds.log_prob(jnp.zeros((1, 2)))[0])
    at_ring = float(ds.log_prob(jnp.array([[0.0, 2.0]]))[0])
    assert math.isfinite(at_origin) and at_origin < at_ring - 5
    # Radial symmetry.
    rotated = jnp.array([[2.0 * math.cos(1.0), 2.0 * math.sin(1.0)]])
    assert float(ds.log_prob(rotated)[0]) == pytest.approx(at_ring, abs=1e-5)


def test_log_prob_rejects_wrong_shape():
    ds = get_dataset("four-modes")
    with pytest.raises(ValueError, match=r"expected points of shape \(n, 2\), got shape \(3,\)"):
        ds.log_prob(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"\(n, 2\), got shape \(4, 3\)"):
        ds.log_prob(jnp.zeros((4, 3)))


def test_dataset_pickles():
    ds = get_dataset("rings")
    restored = pickle.loads(pickle.dumps(ds))
    x = jnp.asarray(_draws("rings")[:10])
    np.testing.assert_array_equal(restored.log_prob(x), ds.log_prob(x))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="expected a built-in dataset name") as info:
        get_dataset("nine-gaussians")
    message = str(info.value)
    assert "'nine-gaussians'" in message and all(name in message for name in list_datasets())


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("1,2\n")
    with pytest.raises(ValueError, match=r"\('.npy', '.csv'\), got .*data.txt"):
        load_data(path)
    with pytest.raises(ValueError, match=r"data\.txt"):
        get_dataset(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        get_dataset(tmp_path / "absent.npy")


def test_load_npy_and_file_dataset(tmp_path):
    data = np.random.default_rng(0).normal(size=(50, 3))
    path = tmp_path / "points.npy"
    np.save(path, data)
    np.testing.assert_array_equal(load_data(path), data)
    ds = get_dataset(str(path))
    assert ds.name == "points" and ds.dim == 3 and not ds.is_builtin
    assert ds.log_prob is None and ds.sample is None
    assert ds.mode_means is None and ds.mode_weights is None
    np.testing.assert_array_equal(ds.data, data)
    low, high = np.array(ds.bounds).T
    assert np.all(low < data.min(0)) and np.all(high > data.max(0))


@pytest.mark.parametrize("header", [None, "x,y"])
def test_load_csv(tmp_path, header):
    data = np.array([[0.5, -1.0], [2.25, 3.0], [-4.0, 1e-3]])
    path = tmp_path / "points.csv"
    rows = [",".join(repr(float(v)) for v in row) for row in data]
    path.write_text("\n".join(([header] if header else []) + rows) + "\n")
    np.testing.assert_array_equal(load_data(path), data)


def test_load_csv_single_row_is_2d(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("1.0,2.0,3.0\n")
    assert load_data(path).shape == (1, 3)


def test_load_csv_garbage(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1.0,oops\n")
    with pytest.raises(ValueError, match="expected comma-separated numbers"):
        load_data(path)


def test_load_rejects_bad_npy(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(5))
    with pytest.raises(
        ValueError, match=r"expected a 2-D array of shape \(n, d\), got shape \(5,\)"
    ):
        load_data(path)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (np.zeros((2, 2, 2)), r"expected a 2-D array of shape \(n, d\), got shape \(2, 2, 2\)"),
        (np.zeros(3), r"got shape \(3,\)"),
        (np.zeros((0, 2)), r"expected a non-empty array .* got shape \(0, 2\)"),
        (np.zeros((3, 0)), r"got shape \(3, 0\)"),
        (np.array([["a", "b"]]), "expected a numeric array of shape \\(n, d\\), got dtype <U1"),
        (np.ones((2, 2), dtype=complex), "got dtype complex128"),
    ],
)
def test_validate_data_rejects_bad_shapes(data, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_data(data)


def test_validate_data_counts_bad_rows():
    data = np.zeros((5, 2))
    data[1, 0] = np.nan
    data[3, 1] = np.inf
    data[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"expected finite data, got .* in 2 of 5 rows"):
        validate_data(data)


def test_validate_data_accepts_and_casts():
    out = validate_data([[1, 2], [3, 4]])
    assert out.dtype == np.float64 and out.shape == (2, 2)
    assert validate_data(jnp.ones((2, 3), dtype=jnp.float32)).dtype == np.float32


def test_list_datasets_all_lists_density_ones_first():
    assert list_datasets() == list_datasets("density") + list_datasets("real")


# -- Columns that are not features: a row index first, a label last ---------------------------


def _write_csv(path, data, header=None):
    rows = [",".join(repr(float(v)) for v in row) for row in data]
    path.write_text("\n".join(([header] if header else []) + rows) + "\n")
    return path


def _features(num_rows=40, num_columns=3):
    return np.random.default_rng(0).normal(size=(num_rows, num_columns))


@pytest.mark.parametrize(
    ("header", "first_column", "reason"),
    [
        (",a,b,c", np.random.default_rng(1).permutation(40), "its header is ''"),  # pandas
        ("Unnamed: 0,a,b,c", np.arange(40), "its header is 'Unnamed: 0'"),
        ("ID,a,b,c", np.arange(100, 140), "its header is 'ID'"),
        (None, np.arange(40), "0, 1, ..., n - 1 in order"),
        ("t,a,b,c", np.arange(1, 41), "1, 2, ..., n in order"),
    ],
)
def test_csv_index_column_is_dropped_with_warning(tmp_path, header, first_column, reason):
    features = _features()
    path = _write_csv(tmp_path / "indexed.csv", np.column_stack([first_column, features]), header)
    with pytest.warns(UserWarning, match=r"indexed\.csv: dropped column 0") as caught:
        loaded = load_data(path)
    assert len(caught) == 1 and reason in str(caught[0].message)
    np.testing.assert_array_equal(loaded, features)


def test_npy_index_column_is_dropped_with_warning(tmp_path):
    features = _features()
    np.save(tmp_path / "indexed.npy", np.column_stack([np.arange(40), features]))
    with pytest.warns(UserWarning, match="looks like a row index"):
        ds = get_dataset(tmp_path / "indexed.npy")
    np.testing.assert_array_equal(ds.data, features)


@pytest.mark.parametrize("header", ["a,b,c,label", "a,b,c,Species", "a,b,c,y"])
def test_csv_label_header_warns_and_keeps_column(tmp_path, header):
    data = _features(num_rows=5, num_columns=4)  # continuous: only the name gives it away
    path = _write_csv(tmp_path / "labelled.csv", data, header)
    with pytest.warns(UserWarning, match=r"last column \('\w+'\) looks like a class label") as w:
        loaded = load_data(path)
    assert "remove it" in str(w[0].message)
    np.testing.assert_array_equal(loaded, data)


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_integer_label_values_warn(tmp_path, suffix):
    labels = np.arange(40) % 3
    data = np.column_stack([_features(), labels])
    path = tmp_path / f"labelled{suffix}"
    if suffix == ".npy":
        np.save(path, data)
    else:
        _write_csv(path, data)
    with pytest.warns(UserWarning, match=r"\(it holds 3 distinct integers while every other"):
        loaded = load_data(path)
    np.testing.assert_array_equal(loaded, data)


def test_index_and_label_together(tmp_path):
    data = np.column_stack([np.arange(40), _features(), np.arange(40) % 2])
    path = _write_csv(tmp_path / "both.csv", data, ",a,b,c,target")
    with pytest.warns(UserWarning) as caught:
        loaded = load_data(path)
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2 and "row index" in messages[0] and "'target'" in messages[1]
    np.testing.assert_array_equal(loaded, data[:, 1:])


def _integer_table():
    return np.random.default_rng(2).integers(0, 5, size=(60, 4)).astype(float)


@pytest.mark.parametrize(
    ("data", "header"),
    [
        (_features(), None),  # continuous
        (_features(), "a,b,c"),
        (_features(num_columns=2), "x,y"),  # 2-D points: "y" is a coordinate here
        (np.sort(_features(), axis=0), None),  # sorted, but not 0..n-1
        (_integer_table(), None),  # integer features (pixels, counts): no column stands out
        (_features(num_rows=3), None),
        (np.column_stack([_features(num_rows=10), np.arange(10) % 2]), None),  # too few rows
        (np.array([[1.0, 2.0, 3.0]]), None),  # 1 row: its first value is trivially "1..n"
        (np.arange(5.0)[:, None], "index"),  # a single column is never dropped
    ],
)
def test_plain_data_raises_no_warning(tmp_path, data, header):
    path = _write_csv(tmp_path / "plain.csv", data, header)
    np.save(tmp_path / "plain.npy", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load_data(path), data)
        np.testing.assert_array_equal(load_data(tmp_path / "plain.npy"), data)
