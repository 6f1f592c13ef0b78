"""Importance sampling of log Z with a flow proposal, and the held-out log-likelihood."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from numpyro_ebm._checks import typed_key
from numpyro_ebm.likelihood.estimate import (
    LogNormalizerEstimate,
    PotentialFn,
    check_inputs,
    potential_energies,
    summarise_log_weights,
)
from numpyro_ebm.samplers.global_moves import importance_log_weight

__all__ = [
    "heldout_log_likelihood",
    "importance_log_normalizer",
    "mean_log_likelihood",
    "unnormalized_log_densities",
]


@eqx.filter_jit
def _importance_log_weights(rng_key, potential_fn, proposal, num_samples: int) -> jax.Array:
    position, proposal_log_prob = proposal.sample_and_log_prob(rng_key, (num_samples,))
    return importance_log_weight(potential_energies(potential_fn, position), proposal_log_prob)


def importance_log_normalizer(
    rng_key: jax.Array, potential_fn: PotentialFn, proposal: Any, num_samples: int
) -> LogNormalizerEstimate:
    """Importance-sampling estimate of log Z = log ∫ exp(−U(x)) dx with draws from ``proposal``.

    log Ẑ = log mean wᵢ with wᵢ = exp(−U(xᵢ) − log q(xᵢ)), xᵢ ~ q, computed with logsumexp. A
    non-finite U or log q gives a zero weight. The standard error is the delta method's
    sd(w)/(√n mean(w)); the ESS is (Σw)²/Σw² [K, O].

    Args:
        rng_key: PRNG key, typed or raw.
        potential_fn: U of one point of shape ``(d,)``.
        proposal: A flowjax distribution q over ``(d,)``.
        num_samples: Number of draws n (at least 2).

    Returns:
        The estimate, with ``method="importance"``.

    References:
        [K] Kong (1992); [O] Owen (2013), §9.2–9.3.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flowjax.distributions import Normal
        >>> estimate = importance_log_normalizer(
        ...     jax.random.key(0), lambda x: 0.5 * x @ x, Normal(jnp.zeros(2)), 1000)
        >>> round(estimate.log_normalizer, 4), estimate.method  # log 2π exactly: q ∝ exp(−U)
        (1.8379, 'importance')
    """
    num_samples = check_inputs(potential_fn, proposal, num_samples)
    log_weights = _importance_log_weights(typed_key(rng_key), potential_fn, proposal, num_samples)
    log_z, stderr, ess = (float(v) for v in summarise_log_weights(log_weights))
    reason = f"importance sampling: ESS {ess:.1f} of {num_samples} draws"
    return LogNormalizerEstimate(log_z, stderr, ess, num_samples, "importance", reason)


def heldout_log_likelihood(
    potential_fn: PotentialFn, data: ArrayLike, estimate: LogNormalizerEstimate
) -> tuple[float, float]:
    """Mean log-likelihood of held-out data, −U(x) − log Ẑ, in nats per example.

    The standard error adds in quadrature the data's sampling error, sd/√n, and log Ẑ's
    standard error (the two are independent: Ẑ does not use the data).

    Args:
        potential_fn: U of one point of shape ``(d,)``.
        data: Held-out points, shape ``(n, d)``.
        estimate: The estimate of log Z for the same ``potential_fn``.

    Returns:
        ``(mean, stderr)`` as floats. A non-finite U counts as zero density (mean −inf).

    Example:
        >>> import jax.numpy as jnp
        >>> exact = LogNormalizerEstimate(1.8379, 0.0, 100.0, 100, "importance", "log 2π")
        >>> heldout_log_likelihood(lambda x: 0.5 * x @ x, jnp.zeros((4, 2)), exact)
        (-1.8379, 0.0)
    """
    if not callable(potential_fn):
        raise TypeError(f"`potential_fn` must be callable, got {type(potential_fn).__name__}.")
    if not isinstance(estimate, LogNormalizerEstimate):
        raise TypeError(
            "expected `estimate` to be a LogNormalizerEstimate (from log_normalizer), got "
            f"{type(estimate).__name__} {estimate!r}"
        )
    data = jnp.asarray(data)
    if data.ndim != 2 or data.shape[0] < 1:
        raise ValueError(f"`data` must have shape (n, d) with n >= 1, got shape {data.shape}.")
    return mean_log_likelihood(unnormalized_log_densities(potential_fn, data), estimate)


def unnormalized_log_densities(potential_fn: PotentialFn, data: jax.Array) -> np.ndarray:
    """−U at each point of ``data`` ``(n, d)``, as float64; −inf where U is not finite."""
    potential_energy = np.asarray(potential_energies(potential_fn, data), dtype=float)
    return np.where(np.isfinite(potential_energy), -potential_energy, -np.inf)


def mean_log_likelihood(
    log_density: np.ndarray, estimate: LogNormalizerEstimate
) -> tuple[float, float]:
    """Mean of ``log_density − log Ẑ`` over held-out points, and its standard error.

    The standard error is :func:`heldout_log_likelihood`'s.

    Example:
        >>> exact = LogNormalizerEstimate(1.0, 0.0, 100.0, 100, "importance", "")
        >>> mean_log_likelihood(np.array([-1.0, -3.0]), exact)
        (-3.0, 1.0)
    """
    num_points = len(log_density)
    mean = float(np.mean(log_density)) - estimate.log_normalizer
    if not math.isfinite(mean):  # zero density somewhere, or log Ẑ infinite: nothing to add
        return mean, math.inf
    data_variance = float(np.var(log_density, ddof=1)) / num_points if num_points > 1 else 0.0
    return mean, math.sqrt(data_variance + estimate.stderr**2)
