"""Tests of numpyro_ebm.metrics: grid normalisation, zone weights, log-density error, mixing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_ebm.datasets import get_dataset
from numpyro_ebm.metrics import (
    grid,
    grid_log_density,
    median_squared_log_density_error,
    mixing_diagnostics,
    zone_weight_mse,
    zone_weights_from_energy,
    zone_weights_from_samples,
)

# Statistical checks use a normal quantile of 4.5 (two-sided false-alarm rate 6.8e-6 per check).
# Seeds are fixed.
Z = 4.5


def _gaussian_energy(mean, std, offset=0.0):
    mean = jnp.asarray(mean)

    def energy_fn(x):
        return 0.5 * jnp.sum((x - mean) ** 2, axis=-1) / std**2 + offset

    return energy_fn


def _gaussian_log_prob(x, mean, std):
    return (
        -0.5 * np.sum((x - mean) ** 2, axis=-1) / std**2 - 2 * math.log(std) - math.log(2 * math.pi)
    )


# --- grid -------------------------------------------------------------------------------------


def test_grid_points_are_cell_centres():
    points, cell_area = grid(((-1.0, 1.0), (0.0, 4.0)), 4)
    assert points.shape == (16, 2)
    assert cell_area == pytest.approx(0.5 * 1.0)
    image = np.asarray(points).reshape(4, 4, 2)
    np.testing.assert_allclose(image[0, :, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(image[:, 0, 1], [0.5, 1.5, 2.5, 3.5])
    # The cells tile the box exactly.
    assert cell_area * points.shape[0] == pytest.approx(2.0 * 4.0)


@pytest.mark.parametrize(
    ("bounds", "num_points", "pattern"),
    [
        (((0, 1),), 10, r"two \(low, high\) pairs, got 1 pairs"),
        (((0, 1), (0, 1), (0, 1)), 10, "got 3 pairs"),
        (((1, 0), (0, 1)), 10, r"low < high, got \(1.0, 0.0\) on axis 0"),
        (((0, 1), (0, math.inf)), 10, "on axis 1"),
        ("ab", 10, "expected bounds as two"),
        (((0, 1), (0, 1)), 1, "num_points >= 2, got 1"),
        (((0, 1), (0, 1)), 2.5, "num_points >= 2, got 2.5"),
    ],
)
def test_grid_rejects_bad_input(bounds, num_points, pattern):
    with pytest.raises(ValueError, match=pattern):
        grid(bounds, num_points)


# --- grid_log_density ---------------------------------------------------------------------------


def test_grid_log_density_recovers_gaussian():
    mean, std = np.array([0.3, -0.2]), 0.7
    bounds, num_points = ((-5.0, 5.0), (-5.0, 5.0)), 200
    # An arbitrary additive constant in the energy must not matter.
    log_density = grid_log_density(_gaussian_energy(mean, std, offset=-12.3), bounds, num_points)
    points, _ = grid(bounds, num_points)
    exact = _gaussian_log_prob(np.asarray(points, dtype=np.float64), mean, std)
    # Normalising on the grid shifts every log density by log(midpoint-rule integral), about
    # (dx / std)^2 / 24 = 2e-4 here; the box holds all but e^-(4.7/0.7)^2/2 ~ 1e-10 of the mass.
    np.testing.assert_allclose(log_density, exact, atol=1e-3)
    assert float(jnp.sum(jnp.exp(log_density)) * 0.05**2) == pytest.approx(1.0, abs=1e-5)


def test_grid_log_density_accepts_infinite_energy():
    # +inf energy is zero density (a hard wall); the rest still normalises.
    def energy_fn(x):
        return jnp.where(x[:, 0] < 0, jnp.inf, 0.0)

    log_density = grid_log_density(energy_fn, ((-1, 1), (0, 1)), 10)
    density = np.exp(np.asarray(log_density))
    np.testing.assert_allclose(density[np.asarray(grid(((-1, 1), (0, 1)), 10)[0])[:, 0] > 0], 1.0)
    assert float(density.sum() * 0.02) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("energy_fn", "pattern"),
    [
        (lambda x: jnp.where(x[:, 0] > 0, jnp.nan, 0.0), "got 50 NaN and 0 -inf of 100"),
        (lambda x: jnp.where(x[:, 0] > 0, -jnp.inf, 0.0), "got 0 NaN and 50 -inf"),
        (lambda x: jnp.full(x.shape[0], jnp.inf), r"got \+inf at every grid point"),
        (lambda x: jnp.zeros((x.shape[0], 1)), r"energies of shape \(100,\), got shape \(100, 1\)"),
    ],
)
def test_grid_log_density_rejects_bad_energy(energy_fn, pattern):
    with pytest.raises(ValueError, match=pattern):
        grid_log_density(energy_fn, ((-1, 1), (-1, 1)), 10)


# --- zone weights -------------------------------------------------------------------------------


def test_zone_weights_from_samples_hand_example():
    means = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    samples = jnp.array([[1.0, 1.0], [9.0, 0.0], [4.0, 6.0], [-1.0, 3.0], [6.0, 1.0]])
    np.testing.assert_allclose(zone_weights_from_samples(samples, means), [0.4, 0.4, 0.2])


def test_zone_weights_from_samples_of_known_mixture():
    ds = get_dataset("four-modes")
    num_samples = 20_000
    weights = np.asarray(
        zone_weights_from_samples(ds.sample(jax.random.key(0), num_samples), ds.mode_means)
    )
    # Zones are 4.5 sigma wide on each side of a mode, so each fraction is binomial(n, w) / n.
    tolerance = Z * np.sqrt(ds.mode_weights * (1 - ds.mode_weights) / num_samples)
    assert np.all(np.abs(weights - ds.mode_weights) <= tolerance), weights
    assert weights.sum() == pytest.approx(1.0)


def test_zone_weights_from_samples_rejects_bad_shapes():
    with pytest.raises(
        ValueError, match=r"expected samples of shape \(n, d\) with n >= 1, got \(3,\)"
    ):
        zone_weights_from_samples(jnp.zeros(3), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"expected mode_means of shape \(k, 2\) .* got \(4, 3\)"):
        zone_weights_from_samples(jnp.zeros((5, 2)), jnp.zeros((4, 3)))


@pytest.mark.parametrize("name", ["two-modes-2to1", "eight-gaussians", "four-modes"])
def test_zone_weights_from_true_energy(name):
    ds = get_dataset(name)
    weights = zone_weights_from_energy(lambda x: -ds.log_prob(x), ds.mode_means, ds.bounds, 300)
    # Grid quadrature of a Gaussian at 300 points per axis: error per zone <= 1e-4 (midpoint rule,
    # (dx / sigma)^2 / 24 with dx / sigma <= 0.17), far below the 1e-3 tolerance.
    np.testing.assert_allclose(weights, ds.mode_weights, atol=1e-3)
    assert zone_weight_mse(weights, ds.mode_weights) < 1e-6


def test_zone_weights_from_energy_negative_control():
    # An EBM with the right modes but equal weights must score a clearly worse zone-weight MSE
    # than the truth: mean((0.25 - w)^2) over w = (0.1, 0.2, 0.3, 0.4) is 0.0125.
    ds = get_dataset("four-modes")
    wrong = get_dataset("four-modes").mode_means

    def equal_weights_energy(x):
        sq_dist = jnp.sum((x[:, None] - jnp.asarray(wrong)[None]) ** 2, axis=-1)
        return -jax.scipy.special.logsumexp(-0.5 * sq_dist / 0.05, axis=-1)

    weights = zone_weights_from_energy(equal_weights_energy, ds.mode_means, ds.bounds, 300)
    np.testing.assert_allclose(weights, 0.25, atol=1e-3)
    assert zone_weight_mse(weights, ds.mode_weights) == pytest.approx(0.0125, rel=1e-2)


@pytest.mark.parametrize("num_points", [40, 100])
def test_zone_weights_split_cells_halfway_between_modes(num_points):
    # An equal-weight mixture symmetric about the anti-diagonal, where a whole line of grid cells
    # lies as near to one centre as to the other: the weights are 1/2 each by symmetry. Giving
    # that line to the first mode (argmin's tie rule) made them 0.507 / 0.493 at 40 points.
    ds = get_dataset("two-modes-2to1")
    means = jnp.asarray(ds.mode_means)

    def symmetric_energy(x):
        sq_dist = jnp.sum((x[:, None] - means[None]) ** 2, axis=-1)
        return -jax.scipy.special.logsumexp(-0.5 * sq_dist / 1.5**2, axis=-1)

    weights = zone_weights_from_energy(symmetric_energy, means, ds.bounds, num_points)
    np.testing.assert_allclose(weights, 0.5, atol=1e-5)
    on_the_line = zone_weights_from_samples(jnp.array([[0.0, 0.0], [3.0, 3.0]]), means)
    np.testing.assert_allclose(on_the_line, [0.25, 0.75])


def test_zone_weights_from_energy_rejects_high_dim_means():
    with pytest.raises(ValueError, match=r"\(k, 2\)"):
        zone_weights_from_energy(lambda x: x[:, 0], np.zeros((4, 16)), ((-1, 1), (-1, 1)), 10)


def test_zone_weight_mse():
    assert zone_weight_mse([0.1, 0.2, 0.7], [0.2, 0.2, 0.6]) == pytest.approx(0.02 / 3)
    assert zone_weight_mse(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    with pytest.raises(ValueError, match=r"same shape \(k,\), got \(3,\) and \(2,\)"):
        zone_weight_mse([0.1, 0.2, 0.7], [0.5, 0.5])


# --- log-density error --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eight-gaussians", "rings"])
def test_median_log_density_error_true_and_wrong(name):
    ds = get_dataset(name)
    # Truth, up to a constant: zero up to float32 rounding of log densities of size ~100 (1e-5).
    true_error = median_squared_log_density_error(
        lambda x: -ds.log_prob(x) + 3.0, ds.log_prob, ds.bounds, 150
    )
    assert true_error < 1e-6
    # Negative control: a single broad Gaussian over the data is off by several nats on most of
    # the grid ([A]'s CoopFlow scores 58.75 and 7.78 on these; flowMC-EBM 0.94 and 0.40).
    wrong_error = median_squared_log_density_error(
        _gaussian_energy(jnp.zeros(2), 1.0), ds.log_prob, ds.bounds, 150
    )
    assert wrong_error > 5.0


def test_median_log_density_error_hand_value():
    # Model N(0.5 e1, I) against truth N(-0.5 e1, I): log p_model - log p_true = x_0 exactly, and
    # on a grid symmetric in x_0 both grid normalisers are equal, so the metric is median(x_0^2).
    bounds, num_points = ((-6.0, 6.0), (-6.0, 6.0)), 120
    error = median_squared_log_density_error(
        _gaussian_energy([0.5, 0.0], 1.0),
        lambda x: -_gaussian_energy([-0.5, 0.0], 1.0)(x),
        bounds,
        num_points,
    )
    points = np.asarray(grid(bounds, num_points)[0], dtype=np.float64)
    assert error == pytest.approx(np.median(points[:, 0] ** 2), rel=1e-4)


# --- mixing -------------------------------------------------------------------------------------


def test_mixing_diagnostics_iid_chains():
    chains = np.random.default_rng(0).normal(size=(4, 1000, 3))
    diagnostics = mixing_diagnostics(chains)
    assert set(diagnostics) == {"max_rhat", "min_ess_bulk"}
    assert all(type(v) is float for v in diagnostics.values())
    # 1.01: the convergence threshold of Vehtari et al. (2021), met by iid chains of 1000 draws.
    assert 0.99 < diagnostics["max_rhat"] < 1.01
    # Bulk ESS of 4000 iid draws is ~4000; half of it leaves room for estimator noise.
    assert diagnostics["min_ess_bulk"] > 2000


def test_mixing_diagnostics_stuck_chains():
    # Negative control: each chain mixes inside its own mode and never leaves (ULA-EBM in [A]).
    rng = np.random.default_rng(1)
    chains = rng.normal(size=(4, 1000, 3)) * 0.1 + np.array([-1.0, 1.0, -1.0, 1.0])[:, None, None]
    diagnostics = mixing_diagnostics(chains)
    assert diagnostics["max_rhat"] > 1.5
    assert diagnostics["min_ess_bulk"] < 100


def test_mixing_diagnostics_leaves_out_coordinates_that_never_change():
    # A fixed entry of a Cholesky factor or a constant deterministic site: R̂ is 0/0 there.
    rng = np.random.default_rng(2)
    stuck = rng.normal(size=(4, 200, 1)) * 0.1 + np.array([-1.0, 1.0, -1.0, 1.0])[:, None, None]
    with_constant = np.concatenate([stuck, np.ones_like(stuck)], axis=-1)
    assert mixing_diagnostics(with_constant) == mixing_diagnostics(stuck)  # was NaN: no alarm
    assert math.isnan(mixing_diagnostics(np.ones((4, 200, 2)))["max_rhat"])
    # Constant within each chain but not across chains: the worst case of not mixing.
    apart = np.broadcast_to(np.arange(4.0)[:, None, None], (4, 200, 1))
    assert mixing_diagnostics(apart)["max_rhat"] > 1e6


def test_mixing_diagnostics_accepts_jax_arrays():
    chains = jax.random.normal(jax.random.key(0), (2, 50, 1))
    assert math.isfinite(mixing_diagnostics(chains)["max_rhat"])


@pytest.mark.parametrize(
    ("chains", "pattern"),
    [
        (np.zeros((4, 100)), r"\(num_chains, num_draws, d\) .* got shape \(4, 100\)"),
        (np.zeros((1, 100, 2)), r"num_chains >= 2.* got shape \(1, 100, 2\)"),
        (np.zeros((2, 3, 2)), r"num_draws >= 4.* got shape \(2, 3, 2\)"),
        (np.full((2, 10, 2), np.nan), "expected finite draws, got 40 NaN or infinite values"),
    ],
)
def test_mixing_diagnostics_rejects_bad_input(chains, pattern):
    with pytest.raises(ValueError, match=pattern):
        mixing_diagnostics(chains)
