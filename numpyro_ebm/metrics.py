"""Metrics of Grenioux, Moulines & Gabrié (2023), arXiv:2306.00684 (``METHOD.md`` §4, "Metrics").

- **Zone weights:** space is split into one zone per true mode (the points whose nearest true mode
  centre is that mode); the mass a model puts in each zone, from exp(-E) normalised on a 2-D grid
  or from samples, is compared with the true weights by mean squared error.
- **Log-density error:** the median over a 2-D grid of (log p_θ - log p*)², both normalised on the
  grid.
- **Mixing:** maximum rank-normalised split R̂ and minimum bulk ESS over coordinates, from ArviZ,
  across independent chains.

An ``energy_fn`` maps points ``(n, d)`` to total energies ``(n,)``, the -log *unnormalised*
density (for a tilted EBM, E_θ(x) - log rho(x)). The grid metrics evaluate it once on all grid
points and check the result concretely, so call them outside ``jit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import arviz
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

__all__ = [
    "grid",
    "grid_log_density",
    "median_squared_log_density_error",
    "mixing_diagnostics",
    "zone_weight_mse",
    "zone_weights_from_energy",
    "zone_weights_from_samples",
]

EnergyFn = Callable[[jax.Array], jax.Array]

# Split R-hat halves each chain, and each half needs at least 2 draws for a within-half variance:
# ArviZ returns NaN below 4 draws.
_MIN_DRAWS = 4


def _check_bounds(bounds: Sequence[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    try:
        pairs = tuple((float(low), float(high)) for low, high in bounds)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"expected bounds as two (low, high) pairs, one per axis, got {bounds!r}"
        ) from error
    if len(pairs) != 2:
        raise ValueError(
            f"expected bounds for a 2-D grid, two (low, high) pairs, got {len(pairs)} pairs"
        )
    for axis, (low, high) in enumerate(pairs):
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(
                f"expected finite bounds with low < high, got ({low}, {high}) on axis {axis}"
            )
    return pairs


def _check_mode_means(mode_means: np.ndarray | jax.Array, dim: int | None = None) -> jax.Array:
    means = jnp.asarray(mode_means)
    if means.ndim != 2 or means.shape[0] == 0 or (dim is not None and means.shape[1] != dim):
        expected = f"(k, {dim})" if dim is not None else "(k, d)"
        raise ValueError(f"expected mode_means of shape {expected} with k >= 1, got {means.shape}")
    return means


#: Squared distances within this fraction of a point's largest one count as a tie.
_TIE_RTOL = 1e-5


def _zone_shares(points: jax.Array, means: jax.Array) -> jax.Array:
    """Each point's share of each mode's zone, ``(n, k)``: 1 for its nearest mode centre.

    A point as near to several centres (a grid line halfway between two modes) is split evenly
    among them: given to the first, as ``argmin`` would, a whole line of cells biases the
    weights toward mode 0 by about one cell row's mass.
    """
    sq_dist = jnp.sum((points[:, None, :] - means[None]) ** 2, axis=-1)
    tolerance = _TIE_RTOL * jnp.max(sq_dist, axis=-1, keepdims=True)
    nearest = sq_dist <= jnp.min(sq_dist, axis=-1, keepdims=True) + tolerance
    return nearest / jnp.sum(nearest, axis=-1, keepdims=True)


def grid(bounds: Sequence[Sequence[float]], num_points: int) -> tuple[jax.Array, float]:
    """A regular 2-D grid of cell centres over a box.

    The box is cut into ``num_points x num_points`` equal cells; the points are their centres, so
    ``sum(f(points)) * cell_area`` is the midpoint rule for the integral of ``f`` over the box.

    Args:
        bounds: ``((x_low, x_high), (y_low, y_high))``, e.g. a 2-D dataset's ``bounds``.
        num_points: Points per axis.

    Returns:
        ``(points, cell_area)``: points of shape ``(num_points**2, 2)``, in row-major image order
        (``points.reshape(num_points, num_points, 2)[i, j]`` is row ``i`` along y, column ``j``
        along x), and the area of one cell.

    Raises:
        ValueError: If ``bounds`` are not two finite ``(low, high)`` pairs with ``low < high``, or
            ``num_points < 2``.

    Example:
        >>> points, cell_area = grid(((0.0, 1.0), (0.0, 2.0)), 4)
        >>> points.shape, cell_area
        ((16, 2), 0.125)
    """
    (x_low, x_high), (y_low, y_high) = _check_bounds(bounds)
    if not isinstance(num_points, int | np.integer) or num_points < 2:
        raise ValueError(f"expected an integer num_points >= 2, got {num_points!r}")
    num_points = int(num_points)
    x_step = (x_high - x_low) / num_points
    y_step = (y_high - y_low) / num_points
    x = x_low + (np.arange(num_points) + 0.5) * x_step
    y = y_low + (np.arange(num_points) + 0.5) * y_step
    xx, yy = np.meshgrid(x, y, indexing="xy")
    points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=-1))
    return points, x_step * y_step


def grid_log_density(
    energy_fn: EnergyFn, bounds: Sequence[Sequence[float]], num_points: int
) -> jax.Array:
    """Log density of exp(-energy) normalised on a 2-D grid.

    Returns log p_i = -E_i - log(cell_area · Σ_j exp(-E_j)), so that Σ_i p_i · cell_area = 1
    (METHOD.md §4, "Metrics": the model density is normalised on the grid).

    Args:
        energy_fn: Total energy, -log unnormalised density, ``(n, 2) -> (n,)``.
        bounds: ``((x_low, x_high), (y_low, y_high))``.
        num_points: Points per axis.

    Returns:
        Log density at the points of :func:`grid`, shape ``(num_points**2,)``.

    Raises:
        ValueError: If ``energy_fn`` returns the wrong shape, NaN or -inf anywhere, or +inf
            everywhere (zero mass on the grid); or bounds / ``num_points`` are invalid.

    Example:
        >>> energy_fn = lambda x: 0.5 * jnp.sum(x**2, axis=-1) + 3.0  # N(0, I), shifted
        >>> log_density = grid_log_density(energy_fn, ((-6, 6), (-6, 6)), 201)
        >>> round(float(log_density[201 * 100 + 100]), 4)  # the origin; exact: -log(2 pi)
        -1.8379
    """
    points, cell_area = grid(bounds, num_points)
    energy = jnp.asarray(energy_fn(points))
    if energy.shape != (points.shape[0],):
        raise ValueError(
            f"expected energy_fn to map points of shape {points.shape} to energies of shape "
            f"({points.shape[0]},), got shape {energy.shape}"
        )
    num_nan = int(jnp.sum(jnp.isnan(energy)))
    num_neg_inf = int(jnp.sum(jnp.isneginf(energy)))
    if num_nan or num_neg_inf:
        raise ValueError(
            f"expected energies that are finite or +inf, got {num_nan} NaN and {num_neg_inf} -inf "
            f"of {energy.shape[0]} grid points"
        )
    if bool(jnp.all(jnp.isposinf(energy))):
        raise ValueError("expected some finite energy on the grid, got +inf at every grid point")
    return -energy - logsumexp(-energy) - math.log(cell_area)


def zone_weights_from_samples(
    samples: np.ndarray | jax.Array, mode_means: np.ndarray | jax.Array
) -> jax.Array:
    """Fraction of samples in each mode's zone (points whose nearest mode centre it is).

    A sample as near to several centres is split evenly among them.

    Args:
        samples: Points of shape ``(n, d)``, e.g. long-run MCMC draws or negatives.
        mode_means: True mode centres, shape ``(k, d)``.

    Returns:
        Zone weights, shape ``(k,)``, summing to 1.

    Raises:
        ValueError: If the shapes do not match ``(n, d)`` and ``(k, d)`` with n, k >= 1.

    Example:
        >>> samples = jnp.array([[-1.1, 0.0], [0.9, 0.2], [1.2, -0.1], [1.0, 0.0]])
        >>> zone_weights_from_samples(samples, jnp.array([[-1.0, 0.0], [1.0, 0.0]])).tolist()
        [0.25, 0.75]
    """
    samples = jnp.asarray(samples)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"expected samples of shape (n, d) with n >= 1, got {samples.shape}")
    means = _check_mode_means(mode_means, samples.shape[1])
    return jnp.mean(_zone_shares(samples, means), axis=0)


def zone_weights_from_energy(
    energy_fn: EnergyFn,
    mode_means: np.ndarray | jax.Array,
    bounds: Sequence[Sequence[float]],
    num_points: int,
) -> jax.Array:
    """Mass that exp(-energy), normalised on a 2-D grid, puts in each mode's zone.

    Args:
        energy_fn: Total energy, -log unnormalised density, ``(n, 2) -> (n,)``.
        mode_means: True mode centres, shape ``(k, 2)``.
        bounds: ``((x_low, x_high), (y_low, y_high))``, covering all modes.
        num_points: Points per axis.

    Returns:
        Zone weights, shape ``(k,)``, summing to 1.

    Raises:
        ValueError: As :func:`grid_log_density`, or if ``mode_means`` is not ``(k, 2)``.

    Example:
        >>> from numpyro_ebm.datasets import get_dataset
        >>> ds = get_dataset("four-modes")
        >>> weights = zone_weights_from_energy(
        ...     lambda x: -ds.log_prob(x), ds.mode_means, ds.bounds, 200
        ... )
        >>> [round(float(w), 3) for w in weights]
        [0.1, 0.2, 0.3, 0.4]
    """
    means = _check_mode_means(mode_means, 2)
    points, cell_area = grid(bounds, num_points)
    mass = jnp.exp(grid_log_density(energy_fn, bounds, num_points)) * cell_area
    weights = mass @ _zone_shares(points, means)
    # Renormalise away the float rounding of Σ mass (exactly 1 in exact arithmetic).
    return weights / jnp.sum(weights)


def zone_weight_mse(weights: np.ndarray | jax.Array, true_weights: np.ndarray | jax.Array) -> float:
    """Mean squared error between estimated and true zone weights.

    Args:
        weights: Estimated zone weights, shape ``(k,)``.
        true_weights: True mode weights, shape ``(k,)``.

    Returns:
        ``mean((weights - true_weights) ** 2)``.

    Raises:
        ValueError: If the two are not 1-D arrays of the same length.

    Example:
        >>> zone_weight_mse([0.2, 0.8], [0.0, 1.0])
        0.04
    """
    weights = np.asarray(weights, dtype=float)
    true_weights = np.asarray(true_weights, dtype=float)
    if weights.ndim != 1 or weights.shape != true_weights.shape:
        raise ValueError(
            f"expected weights and true_weights of the same shape (k,), got {weights.shape} and "
            f"{true_weights.shape}"
        )
    return float(np.mean((weights - true_weights) ** 2))


def median_squared_log_density_error(
    energy_fn: EnergyFn,
    true_log_prob: Callable[[jax.Array], jax.Array],
    bounds: Sequence[Sequence[float]],
    num_points: int,
) -> float:
    """Median over a 2-D grid of (log p_θ - log p*)² (METHOD.md §4, "Metrics").

    p_θ ∝ exp(-energy) is normalised on the grid as [A] prescribes. p* is normalised on the *same*
    grid too, rather than used as given, so that both are densities of the same discretised
    measure: the error is then zero for the true energy up to float rounding, whatever the grid
    resolution or box, and an additive constant in the energy never matters. For a box that holds
    the data and a fine grid, the grid normaliser of p* is 1 to within the midpoint-rule error.

    Args:
        energy_fn: Model total energy, -log unnormalised density, ``(n, 2) -> (n,)``.
        true_log_prob: Exact log density, ``(n, 2) -> (n,)``, e.g. a built-in dataset's
            ``log_prob``.
        bounds: ``((x_low, x_high), (y_low, y_high))``.
        num_points: Points per axis.

    Returns:
        The median squared log-density error. Points where both densities are zero count as 0.

    Raises:
        ValueError: As :func:`grid_log_density`, for either density.

    Example:
        >>> from numpyro_ebm.datasets import get_dataset
        >>> ds = get_dataset("eight-gaussians")
        >>> error = median_squared_log_density_error(
        ...     lambda x: -ds.log_prob(x) + 5.0, ds.log_prob, ds.bounds, 100
        ... )
        >>> error < 1e-6
        True
    """
    model_log_density = grid_log_density(energy_fn, bounds, num_points)
    true_log_density = grid_log_density(lambda x: -true_log_prob(x), bounds, num_points)
    both_zero = jnp.isneginf(model_log_density) & jnp.isneginf(true_log_density)
    squared_error = jnp.where(both_zero, 0.0, (model_log_density - true_log_density) ** 2)
    return float(jnp.median(squared_error))


def mixing_diagnostics(chains: np.ndarray | jax.Array) -> dict[str, float]:
    """Worst rank-normalised split R̂ and bulk ESS over coordinates, from ArviZ.

    R̂ is ArviZ's ``method="rank"`` (Vehtari et al. 2021: the larger of the rank-normalised split
    R̂ of the draws and of their folded values); ESS is the rank-normalised bulk ESS. Vehtari et al.
    recommend R̂ < 1.01; [A] reports max R̂ of its negatives (METHOD.md §4).

    Args:
        chains: Draws of shape ``(num_chains, num_draws, d)``, ``num_chains >= 2``,
            ``num_draws >= 4`` (split R̂ halves each chain).

    Returns:
        ``{"max_rhat": ..., "min_ess_bulk": ...}`` as Python floats. Coordinates with one
        value in every draw of every chain (a fixed entry of a Cholesky factor, a constant
        deterministic site) are left out: R̂ is undefined there and they cannot show a failure
        to mix. NaN if every coordinate is such. A coordinate constant within each chain but
        not across chains counts (its R̂ is huge).

    Raises:
        ValueError: If ``chains`` has the wrong shape or holds NaN or infinite values.

    Example:
        >>> chains = np.random.default_rng(0).normal(size=(4, 500, 2))
        >>> diagnostics = mixing_diagnostics(chains)
        >>> diagnostics["max_rhat"] < 1.01, diagnostics["min_ess_bulk"] > 1000
        (True, True)
    """
    array = np.asarray(chains, dtype=float)
    if array.ndim != 3 or array.shape[0] < 2 or array.shape[1] < _MIN_DRAWS or array.shape[2] < 1:
        raise ValueError(
            "expected chains of shape (num_chains, num_draws, d) with num_chains >= 2, "
            f"num_draws >= {_MIN_DRAWS} and d >= 1, got shape {array.shape}"
        )
    num_bad = int(np.sum(~np.isfinite(array)))
    if num_bad:
        raise ValueError(f"expected finite draws, got {num_bad} NaN or infinite values")
    varying = np.ptp(array, axis=(0, 1)) > 0
    if not np.any(varying):
        return {"max_rhat": float("nan"), "min_ess_bulk": float("nan")}
    array = array[..., varying]
    rhat = np.asarray(arviz.rhat(array, method="rank", chain_axis=0, draw_axis=1))
    ess_bulk = np.asarray(arviz.ess(array, method="bulk", chain_axis=0, draw_axis=1))
    return {"max_rhat": float(np.max(rhat)), "min_ess_bulk": float(np.min(ess_bulk))}
