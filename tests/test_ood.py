"""Tests of numpyro_ebm.ood: the AUROC against oracles, the shifts' invariants, the OOD scores."""

import math

import jax
import numpy as np
import pytest

from numpyro_ebm.ood import SHIFTS, auroc, ood_aurocs, shifted_data

# Two-sided normal quantile of a 99.9% interval: each null test below raises a false alarm with
# probability 1e-3 (seeds are fixed, so a given run either always passes or always fails).
Z_999 = 3.2905


def pairwise_auroc(scores_in, scores_out):
    """O(n_in n_out) reference: P(out > in) + P(out == in) / 2 over all pairs."""
    scores_in = np.asarray(scores_in)[:, None]
    scores_out = np.asarray(scores_out)[None, :]
    return float(np.mean((scores_out > scores_in) + 0.5 * (scores_out == scores_in)))


def mann_whitney_z(value, n_in, n_out):
    """AUROC standardised by its null law: U ~ N(n1 n2 / 2, n1 n2 (n1 + n2 + 1) / 12)."""
    u = value * n_in * n_out
    return (u - n_in * n_out / 2) / math.sqrt(n_in * n_out * (n_in + n_out + 1) / 12)


@pytest.mark.parametrize(("n_in", "n_out", "levels"), [(1, 1, 2), (7, 13, 3), (300, 200, 10)])
def test_auroc_equals_pairwise_reference_with_ties(n_in, n_out, levels):
    rng = np.random.default_rng(0)
    scores_in = rng.integers(0, levels, n_in).astype(float)  # few levels: many ties
    scores_out = rng.integers(0, levels, n_out).astype(float) + 0.5 * rng.integers(0, 2, n_out)
    assert auroc(scores_in, scores_out) == pytest.approx(pairwise_auroc(scores_in, scores_out))


def test_auroc_equals_sklearn_roc_auc_score():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores_in = np.round(rng.normal(size=250), 1)  # rounding makes ties
    scores_out = np.round(rng.normal(0.3, 1.0, size=150), 1)
    labels = np.r_[np.zeros(250), np.ones(150)]
    expected = metrics.roc_auc_score(labels, np.r_[scores_in, scores_out])
    assert auroc(scores_in, scores_out) == pytest.approx(expected, abs=1e-12)


def test_auroc_is_one_when_separated_and_zero_when_reversed():
    low, high = np.arange(10.0), np.arange(10.0) + 100.0
    assert auroc(low, high) == 1.0
    assert auroc(high, low) == 0.0
    assert auroc([1.0, 1.0], [1.0, 1.0]) == 0.5


def test_auroc_of_one_distribution_lies_in_its_null_interval():
    rng = np.random.default_rng(2)
    n_in, n_out = 400, 600
    same = auroc(rng.normal(size=n_in), rng.normal(size=n_out))
    assert abs(mann_whitney_z(same, n_in, n_out)) < Z_999
    # Negative control: a shift of 0.5 sd gives AUROC Φ(0.5 / √2) ≈ 0.64, about 7 null sds out.
    shifted = auroc(rng.normal(size=n_in), rng.normal(0.5, 1.0, size=n_out))
    assert mann_whitney_z(shifted, n_in, n_out) > Z_999


def test_auroc_counts_non_finite_ood_scores_as_maximally_ood():
    scores_in = np.array([0.0, 5.0, 1e30])
    assert auroc(scores_in, [np.nan, np.inf, -np.inf]) == 1.0
    # One finite OOD score below everything plus one NaN: (0 + 3) / 6.
    assert auroc(scores_in, [-1.0, np.nan]) == 0.5


@pytest.mark.parametrize(
    ("scores_in", "scores_out", "message"),
    [
        ([], [1.0], "`scores_in` of shape"),
        ([1.0], [], "`scores_out` of shape"),
        ([[1.0]], [1.0], r"got shape \(1, 1\)"),
        ([1.0, np.nan], [1.0], "got 1 non-finite of 2"),
        ([np.inf], [1.0], "finite `scores_in`"),
    ],
)
def test_auroc_rejects_bad_inputs(scores_in, scores_out, message):
    with pytest.raises(ValueError, match=message):
        auroc(scores_in, scores_out)


@pytest.fixture(scope="module")
def digits_like():
    """Integer images 3x4, like pixel levels."""
    return np.random.default_rng(3).integers(0, 17, size=(50, 12))


def test_shifts_keep_shapes_and_names(digits_like):
    shifts = shifted_data(digits_like, jax.random.key(0), image_shape=(3, 4))
    assert tuple(shifts) == SHIFTS
    for shifted in shifts.values():
        assert shifted.shape == digits_like.shape
    assert shifts["pixel-shuffled"].dtype == digits_like.dtype
    assert shifts["flipped"].dtype == digits_like.dtype
    assert shifts["noise"].dtype == np.float64


def test_pixel_shuffle_keeps_each_rows_values_and_permutes_rows_independently(digits_like):
    shuffled = shifted_data(digits_like, jax.random.key(1))["pixel-shuffled"]
    np.testing.assert_array_equal(np.sort(shuffled, axis=1), np.sort(digits_like, axis=1))
    # Distinct values in each row make the permutation visible: each row gets its own.
    distinct = np.tile(np.arange(12.0), (50, 1))
    shuffled = shifted_data(distinct, jax.random.key(1))["pixel-shuffled"]
    assert len({tuple(row) for row in shuffled}) == 50


def test_flip_is_an_involution_and_flips_left_right():
    x = np.arange(2 * 2 * 3 * 2).reshape(2, 12)  # two images, height 2, width 3, channels 2
    flip = shifted_data(x, jax.random.key(0), image_shape=(2, 3, 2))["flipped"]
    images = x.reshape(2, 2, 3, 2)
    np.testing.assert_array_equal(flip.reshape(2, 2, 3, 2)[:, :, 0], images[:, :, 2])
    again = shifted_data(flip, jax.random.key(0), image_shape=(2, 3, 2))["flipped"]
    np.testing.assert_array_equal(again, x)
    tabular = shifted_data(x, jax.random.key(0))["flipped"]
    np.testing.assert_array_equal(tabular, x[:, ::-1])
    np.testing.assert_array_equal(shifted_data(tabular, jax.random.key(0))["flipped"], x)


def test_noise_matches_the_datas_moments_and_uniform_its_range():
    rng = np.random.default_rng(4)
    n = 20_000
    x = rng.normal([1.0, -2.0, 10.0], [0.5, 2.0, 3.0], size=(n, 3))
    shifts = shifted_data(x, jax.random.key(2))
    noise, uniform = shifts["noise"], shifts["uniform"]
    # Standard errors of a Gaussian sample's mean (σ/√n) and standard deviation (≈ σ/√(2n));
    # each bound is 4 standard errors (false-alarm rate about 6e-5 per coordinate).
    sigma = x.std(axis=0)
    assert np.all(np.abs(noise.mean(axis=0) - x.mean(axis=0)) < 4 * sigma / math.sqrt(n))
    assert np.all(np.abs(noise.std(axis=0) - sigma) < 4 * sigma / math.sqrt(2 * n))
    low, high = x.min(axis=0), x.max(axis=0)
    assert np.all((uniform >= low) & (uniform <= high))
    # A uniform's mean has standard error (high - low) / √(12 n).
    width = high - low
    assert np.all(np.abs(uniform.mean(axis=0) - (low + high) / 2) < 4 * width / math.sqrt(12 * n))


def test_shifts_take_raw_and_typed_keys_alike(digits_like):
    raw = shifted_data(digits_like, jax.random.PRNGKey(5))
    typed = shifted_data(digits_like, jax.random.key(5))
    other = shifted_data(digits_like, jax.random.key(6))
    for name in ("pixel-shuffled", "noise", "uniform"):
        np.testing.assert_array_equal(raw[name], typed[name])
        assert not np.array_equal(raw[name], other[name])


def test_shifts_reject_bad_inputs(digits_like):
    with pytest.raises(ValueError, match="`image_shape`"):
        shifted_data(digits_like, jax.random.key(0), image_shape=(3, 3))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        shifted_data(digits_like[0], jax.random.key(0))
    with pytest.raises(ValueError, match="finite numbers"):
        shifted_data(np.full((2, 2), np.nan), jax.random.key(0))
    with pytest.raises(TypeError, match="Expected a PRNG key"):
        shifted_data(digits_like, 0)


def gaussian_energy(x):
    """Exact energy of N(0, I), summing sorted terms so any permutation gives identical bits."""
    return 0.5 * np.sum(np.sort(np.asarray(x, dtype=np.float64) ** 2, axis=1), axis=1)


def test_exact_gaussian_energy_detects_a_far_shift_and_is_blind_to_permutations():
    rng = np.random.default_rng(7)
    heldout = rng.normal(size=(500, 5))
    far = rng.normal(size=(300, 5)) + 3.0
    scores = ood_aurocs(gaussian_energy, heldout, jax.random.key(8), others={"far": far})
    assert tuple(scores) == (*SHIFTS, "far")
    assert scores["far"] > 0.9
    assert scores["uniform"] > 0.9  # the range of 500 N(0, 1) draws is about ±3: wider
    # Shuffles and flips permute coordinates, which the energy of N(0, I) cannot see.
    assert scores["pixel-shuffled"] == 0.5
    assert scores["flipped"] == 0.5
    # Noise with the data's moments is (nearly) the data's own law: a null AUROC.
    assert abs(mann_whitney_z(scores["noise"], 500, 500)) < Z_999


def test_ood_aurocs_rejects_bad_inputs():
    heldout = np.zeros((4, 2))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="other than the shifts"):
        ood_aurocs(gaussian_energy, heldout, key, others={"noise": heldout})
    with pytest.raises(ValueError, match=r"dimension d = 2"):
        ood_aurocs(gaussian_energy, heldout, key, others={"other": np.zeros((3, 5))})
    with pytest.raises(ValueError, match=r"energies of shape \(4,\)"):
        ood_aurocs(lambda x: np.zeros((len(x), 1)), heldout, key)
