"""Normalising constants of an energy, estimated with a flow proposal, and held-out likelihoods.

An energy ``U`` (a callable from one point ``(d,)`` to a scalar, e.g. a ``TiltedEnergy``) has
normalising constant Z = ∫ exp(−U(x)) dx. Both estimators of log Z start from a proposal q, a
flowjax distribution (e.g. a fitted flow): :func:`importance_log_normalizer` (IS) and
:func:`annealed_log_normalizer` (annealed IS, AIS [N]). :func:`log_normalizer` runs IS, falls
back to AIS when the effective sample size (ESS) [K, O] is too small, and warns when even AIS
leaves it small. Every estimate has a delta-method stderr of log Ẑ and its weights' ESS.

The ESS flags weights dominated by a few draws, not a region of exp(−U) that q (and AIS's MALA
moves) never visit: a proposal missing a mode gives even weights and log Ẑ low by
−log(1 − missing mass), with a small stderr. A proposal far narrower than exp(−U) gives weights
of infinite variance, whose ESS can look healthy in low dimension while log Ẑ is too low.

References:
    [N] R. M. Neal, *Annealed importance sampling*, Statistics and Computing 11:125–139 (2001).
    [K] A. Kong, *A note on importance sampling using standardized weights*, TR 348 (1992).
    [O] A. B. Owen, *Monte Carlo theory, methods and examples* (2013), §9.2–9.3.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jax.typing import ArrayLike

from numpyro_ebm._checks import positive_float, positive_int, typed_key
from numpyro_ebm._warnings import warn_user
from numpyro_ebm.samplers.global_moves import importance_log_weight
from numpyro_ebm.samplers.langevin import init_walkers, mala_step

__all__ = ["LogNormalizerEstimate", "annealed_log_normalizer", "heldout_log_likelihood"]
__all__ += ["importance_log_normalizer", "log_normalizer"]

PotentialFn = Callable[[jax.Array], jax.Array]

#: Acceptance aimed at by AIS's step-size adaptation: MALA's optimum (Roberts & Rosenthal 1998).
_TARGET_ACCEPT = 0.574
#: Robbins–Monro gain on log ε per MALA step: ε moves ≤ e^0.57× a step, fixing 10× in a few.
_ADAPTATION_GAIN = 1.0


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


def _summarise_log_weights(log_weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
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
def _potential_energies(potential_fn: PotentialFn, position: jax.Array) -> jax.Array:
    return jax.vmap(potential_fn)(position)


@eqx.filter_jit
def _importance_log_weights(rng_key, potential_fn, proposal, num_samples: int) -> jax.Array:
    position, proposal_log_prob = proposal.sample_and_log_prob(rng_key, (num_samples,))
    return importance_log_weight(_potential_energies(potential_fn, position), proposal_log_prob)


def _check_inputs(potential_fn: Any, proposal: Any, num_samples: Any) -> int:
    if not callable(potential_fn):
        raise TypeError(f"`potential_fn` must be callable, got {type(potential_fn).__name__}.")
    if not all(callable(getattr(proposal, m, None)) for m in ("sample_and_log_prob", "log_prob")):
        raise TypeError(
            f"`proposal` must be a flowjax distribution, got {type(proposal).__name__}."
        )
    return positive_int("num_samples", num_samples, minimum=2)  # 2 for a sample variance


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
    num_samples = _check_inputs(potential_fn, proposal, num_samples)
    log_weights = _importance_log_weights(typed_key(rng_key), potential_fn, proposal, num_samples)
    log_z, stderr, ess = (float(v) for v in _summarise_log_weights(log_weights))
    reason = f"importance sampling: ESS {ess:.1f} of {num_samples} draws"
    return LogNormalizerEstimate(log_z, stderr, ess, num_samples, "importance", reason)


def _default_betas(num_temperatures: int) -> jax.Array:
    """Sigmoidal schedule β_k ∝ σ(8k/K − 4), rescaled to β₀ = 0, β_K = 1 (Grosse et al. 2015).

    A step Δβ adds about Δβ² Var_β(ℓ) to the variance of log w, ℓ = −U − log q, so steps should
    shrink where Var_β(ℓ) is large (Gelman & Meng 1998; [N, §6]). For Gaussians sd_β(ℓ) ∝
    1/precision_β, linear in β: largest at β = 0 if q is broader than the target, at β = 1 if
    narrower. Which is unknown when AIS runs, so the sigmoid is dense at both ends. 16-d Gaussian,
    K = 50: AIS ESS 119/28/352 (q 0.3× too narrow/3× too broad/0.6× and shifted) against
    69/27/425 for linear and 8.5/84/257 for quadratic spacing.
    """
    logistic = jax.nn.sigmoid(jnp.linspace(-4.0, 4.0, num_temperatures + 1))
    return (logistic - logistic[0]) / (logistic[-1] - logistic[0])


def _check_annealing(num_temperatures: Any, num_mala_steps: Any, step_size: Any) -> None:
    positive_int("num_temperatures", num_temperatures)
    positive_int("num_mala_steps", num_mala_steps)
    if step_size is not None:
        positive_float("step_size", step_size)


@eqx.filter_jit
def _annealed_log_weights(
    rng_key, potential_fn, proposal, num_samples: int, betas, num_mala_steps: int, step_size, gain
):
    """AIS log weights [N, Eq. 3], mean MALA acceptance and the final step size."""
    key_init, key_path = jax.random.split(rng_key)
    position = proposal.sample(key_init, (num_samples,))
    if step_size is None:
        # About the optimal MALA step for a Gaussian of q's spread, ε ≈ σ² d^(−1/3) (Roberts &
        # Rosenthal 1998), halved to err small; the adaptation corrects it within a few steps.
        dim = position.shape[-1]
        step_size = 0.5 * jnp.mean(jnp.var(position, axis=0)) * dim ** (-1.0 / 3.0)
    log_eps = jnp.log(jnp.asarray(step_size, position.dtype))

    @jax.vmap
    def log_ratio(x):  # ℓ(x) = log γ₁(x) − log γ₀(x) = −U(x) − log q(x)
        value = -potential_fn(x) - proposal.log_prob(x)
        return jnp.where(jnp.isfinite(value), value, -jnp.inf)

    def one_temperature(carry, inputs):
        position, log_weight, log_eps = carry
        key, beta_previous, beta = inputs
        # Weight before moving [N, Eq. 3]: log w += (β_k − β_{k−1}) ℓ(x_{k−1}); a non-finite ℓ
        # (U NaN or ±inf) is a zero weight, and it stays zero.
        log_weight = log_weight + (beta - beta_previous) * log_ratio(position)
        alive = jnp.isfinite(log_weight)

        def intermediate_potential(x):  # −log γ_β = β U − (1 − β) log q
            return beta * potential_fn(x) - (1.0 - beta) * proposal.log_prob(x)

        def one_mala_step(inner, key):
            walkers, log_eps = inner
            walkers, info = mala_step(key, walkers, intermediate_potential, jnp.exp(log_eps))
            # Step size from past acceptance only, averaged over the walkers: each kernel leaves
            # its γ_β invariant and depends on any one walker by O(1/n), as in adaptive SMC.
            accept = jnp.sum(alive * info.accept_prob) / jnp.maximum(jnp.sum(alive), 1)
            log_eps = log_eps + gain * (accept - _TARGET_ACCEPT)
            return (walkers, log_eps), accept

        walkers = init_walkers(position, intermediate_potential)
        keys = jax.random.split(key, num_mala_steps)
        (walkers, log_eps), accepts = jax.lax.scan(one_mala_step, (walkers, log_eps), keys)
        return (walkers.position, log_weight, log_eps), jnp.mean(accepts)

    num_temperatures = betas.shape[0] - 1
    keys = jax.random.split(key_path, num_temperatures - 1)
    init = (position, jnp.zeros(num_samples, position.dtype), log_eps)
    (position, log_weight, log_eps), accepts = jax.lax.scan(
        one_temperature, init, (keys, betas[:-2], betas[1:-1])
    )
    # No move at β_K = 1: it would only improve final positions, which Ẑ does not use.
    log_weight = log_weight + (betas[-1] - betas[-2]) * log_ratio(position)
    mean_accept = jnp.mean(accepts) if num_temperatures > 1 else jnp.nan
    return log_weight, mean_accept, jnp.exp(log_eps)


def annealed_log_normalizer(
    rng_key: jax.Array,
    potential_fn: PotentialFn,
    proposal: Any,
    num_samples: int,
    *,
    num_temperatures: int = 100,
    num_mala_steps: int = 2,
    step_size: float | None = None,
    adapt_step_size: bool = True,
) -> LogNormalizerEstimate:
    """Annealed importance sampling [N] estimate of log Z, from ``proposal`` to exp(−U).

    Walkers start at xᵢ ~ q and move along the geometric path log γ_β = (1 − β) log q − β U,
    β = β₀ = 0 < β₁ < … < β_K = 1 (sigmoidal spacing, see ``_default_betas``). At each β_k the
    log weight gains (β_k − β_{k−1})(−U(x) − log q(x)), then ``num_mala_steps`` MALA steps
    targeting γ_{β_k} move the walkers. The MALA step size starts at ``step_size`` and, unless
    ``adapt_step_size`` is false, is adapted after every step toward a mean acceptance of 0.574
    (Robbins–Monro on log ε). It depends on the past only, so every kernel leaves its γ_β
    invariant; a mean over the walkers, it couples them by O(1/n): Ẑ is consistent but, unlike
    with a fixed step (Neal's setting), not exactly unbiased. Estimate, stderr and ESS come from
    the final weights as in IS. Cost: K·(num_mala_steps + 1) gradients of U and log q per walker.

    Args:
        rng_key: PRNG key, typed or raw.
        potential_fn: U of one point of shape ``(d,)``; must be differentiable.
        proposal: A flowjax distribution q over ``(d,)``, differentiable in x.
        num_samples: Number of walkers n (at least 2).
        num_temperatures: Number K of annealing steps.
        num_mala_steps: MALA steps per intermediate temperature.
        step_size: Initial MALA step size ε; by default 0.5 σ² d^(−1/3), σ² the mean variance of
            the proposal's draws.
        adapt_step_size: Whether to adapt ε from the acceptance rate; false keeps it fixed.

    Returns:
        The estimate, ``method="annealed"``; ``reason`` gives acceptance and final step size.

    References:
        [N] R. M. Neal, *Annealed importance sampling*, Statistics and Computing 11 (2001).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flowjax.distributions import Normal
        >>> estimate = annealed_log_normalizer(jax.random.key(0), lambda x: 0.5 * x @ x,
        ...     Normal(jnp.zeros(2), 2.0), 500, num_temperatures=20)
        >>> abs(estimate.log_normalizer - 1.8379) < 3 * estimate.stderr  # log 2π
        True
    """
    num_samples = _check_inputs(potential_fn, proposal, num_samples)
    _check_annealing(num_temperatures, num_mala_steps, step_size)
    key, betas = typed_key(rng_key), _default_betas(num_temperatures)
    gain = _ADAPTATION_GAIN if adapt_step_size else 0.0
    initial = None if step_size is None else jnp.asarray(float(step_size))
    log_weights, accept, last_step_size = _annealed_log_weights(
        key, potential_fn, proposal, num_samples, betas, num_mala_steps, initial, gain
    )
    log_z, stderr, ess = (float(v) for v in _summarise_log_weights(log_weights))
    reason = (
        f"annealed importance sampling: ESS {ess:.1f} of {num_samples} walkers, "
        f"{num_temperatures} temperatures x {num_mala_steps} MALA steps, mean acceptance "
        f"{float(accept):.2f}, final step size {float(last_step_size):.3g}"
    )
    return LogNormalizerEstimate(log_z, stderr, ess, num_samples, "annealed", reason)


def log_normalizer(
    rng_key: jax.Array,
    potential_fn: PotentialFn,
    proposal: Any,
    num_samples: int,
    *,
    min_ess_fraction: float = 0.05,
    num_temperatures: int = 100,
    num_mala_steps: int = 2,
    step_size: float | None = None,
) -> LogNormalizerEstimate:
    """Estimate log Z by importance sampling, falling back to AIS when the ESS is too small.

    If the ESS/n of :func:`importance_log_normalizer` is below ``min_ess_fraction``, a few draws
    dominate and its standard error is not to be trusted: it returns
    :func:`annealed_log_normalizer` (same n) instead, and warns once if that ESS/n is still
    below the threshold. The ESS cannot reveal a mode q never reaches (see the module's doc).

    Args:
        rng_key: PRNG key, typed or raw.
        potential_fn: U of one point of shape ``(d,)``.
        proposal: A flowjax distribution q over ``(d,)``.
        num_samples: Number of draws (and of AIS walkers), at least 2.
        min_ess_fraction: Smallest acceptable ESS/n, in (0, 1]. The default 5% is a rule of
            thumb: as ESS/n = 1/(1 + cv²) [K], it allows a weight coefficient of variation 4.4.
        num_temperatures: For :func:`annealed_log_normalizer`.
        num_mala_steps: For :func:`annealed_log_normalizer`.
        step_size: For :func:`annealed_log_normalizer`.

    Returns:
        The estimate; ``method`` says which estimator gave it and ``reason`` why.

    Warns:
        UserWarning: If the returned estimate's ESS/n is below ``min_ess_fraction``.

    References:
        [N] Neal (2001); [K] Kong (1992); [O] Owen (2013), §9.3.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flowjax.distributions import Normal
        >>> estimate = log_normalizer(
        ...     jax.random.key(0), lambda x: 0.5 * x @ x, Normal(jnp.zeros(2), 1.2), 1000)
        >>> estimate.method, abs(estimate.log_normalizer - 1.8379) < 3 * estimate.stderr
        ('importance', True)
    """
    if not isinstance(min_ess_fraction, int | float) or not 0 < min_ess_fraction <= 1:
        raise ValueError(f"`min_ess_fraction` must be in (0, 1], got {min_ess_fraction!r}.")
    # Check the AIS arguments now, so that an error does not depend on which branch runs.
    _check_annealing(num_temperatures, num_mala_steps, step_size)
    annealing = {"num_temperatures": num_temperatures, "num_mala_steps": num_mala_steps}
    annealing["step_size"] = step_size
    key_importance, key_annealed = jax.random.split(typed_key(rng_key))
    estimate = importance_log_normalizer(key_importance, potential_fn, proposal, num_samples)
    fraction, threshold = estimate.ess / num_samples, f"min_ess_fraction {min_ess_fraction:.3g}"
    if fraction >= min_ess_fraction:
        return estimate._replace(
            reason=f"{estimate.reason} (fraction {fraction:.3g} >= {threshold})"
        )
    switch = f"switched to AIS: {estimate.reason} (fraction {fraction:.3g} < {threshold})"
    estimate = annealed_log_normalizer(
        key_annealed, potential_fn, proposal, num_samples, **annealing
    )
    estimate = estimate._replace(reason=f"{switch}; {estimate.reason}")
    fraction = estimate.ess / num_samples
    if fraction < min_ess_fraction:
        message = (
            f"log Z estimate is unreliable: annealed ESS {estimate.ess:.1f} of {num_samples} "
            f"(fraction {fraction:.3g} < {threshold}); its stderr {estimate.stderr:.3g} may be "
            "far too small. Use a better proposal, more samples or more temperatures."
        )
        warn_user(message)
    return estimate


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
    data = jnp.asarray(data)
    if data.ndim != 2 or data.shape[0] < 1:
        raise ValueError(f"`data` must have shape (n, d) with n >= 1, got shape {data.shape}.")
    potential_energy = _potential_energies(potential_fn, data)
    log_density = np.where(np.isfinite(potential_energy), -np.asarray(potential_energy), -np.inf)
    mean = float(np.mean(log_density)) - estimate.log_normalizer
    if not math.isfinite(mean):  # zero density somewhere, or log Ẑ infinite: nothing to add
        return mean, math.inf
    data_variance = float(np.var(log_density, ddof=1)) / len(data) if len(data) > 1 else 0.0
    return mean, math.sqrt(data_variance + estimate.stderr**2)
