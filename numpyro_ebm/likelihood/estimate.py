"""What every estimator of log Z returns, and the pieces they share."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from numpyro_ebm._checks import positive_int

__all__ = ["LogNormalizerEstimate", "PotentialFn"]

PotentialFn = Callable[[jax.Array], jax.Array]


class LogNormalizerEstimate(NamedTuple):
    """An estimate of log Z with its uncertainty; every field is a plain Python value (JSON).

    Attributes:
        log_normalizer: The estimate log Ẑ (−inf if every weight is zero).
        stderr: Delta-method standard error of log Ẑ (inf if every weight is zero).
        ess: Effective sample size (Σw)²/Σw² of the final weights [K]; 0 if all are zero.
        num_samples: Number of weighted draws.
        method: ``"importance"`` or ``"annealed"``.
        reason: Why this method was used, with its diagnostics, in words.

    Example:
        >>> LogNormalizerEstimate(1.84, 0.01, 950.0, 1000, "importance", "ESS 950")._asdict()["ess"]
        950.0
    """

    log_normalizer: float
    stderr: float
    ess: float
    num_samples: int
    method: str
    reason: str


def summarise_log_weights(log_weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Log Ẑ = log mean(w), its delta-method stderr and the ESS, all in log space.

    With w̄ = w/Σw: ESS = 1/Σw̄², var(w)/mean(w)² = n(nΣw̄² − 1)/(n − 1), so [O, §9.2]
    se(log Ẑ) = sd(w)/(√n mean(w)) = √((nΣw̄² − 1)/(n − 1)).
    """
    num_samples = log_weights.shape[0]
    log_weights = jnp.where(jnp.isfinite(log_weights), log_weights, -jnp.inf)
    log_sum = logsumexp(log_weights)
    any_positive = jnp.isfinite(log_sum)
    normalised = jnp.where(any_positive, jnp.exp(log_weights - log_sum), 0.0)
    sum_squares = jnp.sum(normalised**2)
    log_z = jnp.where(any_positive, log_sum - math.log(num_samples), -jnp.inf)
    relative_variance = jnp.maximum(num_samples * sum_squares - 1.0, 0.0) / (num_samples - 1)
    stderr = jnp.where(any_positive, jnp.sqrt(relative_variance), jnp.inf)
    ess = jnp.where(any_positive, 1.0 / sum_squares, 0.0)
    return log_z, stderr, ess


@eqx.filter_jit
def potential_energies(potential_fn: PotentialFn, position: jax.Array) -> jax.Array:
    return jax.vmap(potential_fn)(position)


def check_inputs(potential_fn: Any, proposal: Any, num_samples: Any) -> int:
    if not callable(potential_fn):
        raise TypeError(f"`potential_fn` must be callable, got {type(potential_fn).__name__}.")
    if not all(callable(getattr(proposal, m, None)) for m in ("sample_and_log_prob", "log_prob")):
        raise TypeError(
            f"`proposal` must be a flowjax distribution, got {type(proposal).__name__}."
        )
    shape = getattr(proposal, "shape", None)
    if shape is not None:  # U must take one point to a scalar, as the proposal draws them
        point = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
        returned = jax.eval_shape(potential_fn, point).shape
        if returned != ():
            raise ValueError(
                f"expected `potential_fn` to return a scalar for one point of shape "
                f"{tuple(shape)} (the proposal's), got shape {returned}"
            )
    return positive_int("num_samples", num_samples, minimum=2)  # 2 for a sample variance
