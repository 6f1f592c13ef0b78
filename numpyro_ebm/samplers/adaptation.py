"""Warm-up adaptation from the walker ensemble: a preconditioner and the MALA step size.

Many walkers give, at every iteration, an estimate of the target's location and scale that a
single chain only gets from its history. The flowMC round uses it twice:

- **Preconditioning.** An affine map ``x = loc + L u`` with ``loc`` the walkers' mean and
  ``L`` their standard deviations (diagonal, the default) or the Cholesky factor of their
  covariance (dense), over the buffered rounds, the current one included
  (:func:`~numpyro_ebm.samplers.warmup.preconditioner_points`). MALA runs in ``u``, which
  is preconditioned MALA with mass matrix ``(L Lᵀ)⁻¹`` in ``x`` (the role of NUTS's adapted
  mass matrix), and the proposal flow is fitted in ``u``, so it follows the walkers wherever
  the posterior sits and however it is scaled (a flow of standardised coordinates, as spline
  transformers need; METHOD.md §6).
- **Windows.** When the walkers have moved far from where the current window started (their
  mean by more than one standard deviation, or a scale by more than a factor of two), a new
  window starts: the flow's buffer forgets the stale positions and the step-size adaptation
  restarts, as NUTS restarts its adaptation at each window of its warm-up.

The step size is adapted by dual averaging (Hoffman & Gelman 2014, Alg. 6, NumPyro's
implementation), which moves the log step size by tens of units in a few iterations when it is
far off, where a Robbins–Monro recursion with a decaying gain needs thousands.

References:
    M. D. Hoffman, A. Gelman, *The No-U-Turn Sampler*, JMLR 15 (2014).
    C. Andrieu, J. Thoms, *A tutorial on adaptive MCMC*, Stat. Comput. 18 (2008).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from flowjax.bijections import Affine, TriangularAffine
from flowjax.distributions import AbstractDistribution, Transformed
from numpyro.infer.hmc_util import dual_averaging

__all__ = [
    "adapt_step_size",
    "Preconditioner",
    "ensemble_preconditioner",
    "from_latent",
    "identity_preconditioner",
    "particle_chunks_per_cost",
    "init_step_size_adaptation",
    "moved_far",
    "precondition_flow",
    "preconditioner_scales",
    "to_latent",
    "update_step_size",
]

#: Shrinkage of a dense covariance estimate toward its diagonal, as ``n / (n + 5)`` in Stan's
#: metric adaptation: with few walkers per dimension the sample covariance is singular.
_DENSE_SHRINKAGE_COUNT = 5.0
#: Spread, in units of the float resolution at the walkers' mean (eps·|loc|), below which a
#: coordinate counts as collapsed: all walkers at one value up to rounding. Relative only: an
#: absolute floor (1e-6 before) froze a posterior whose sd is 1e-9 (a wavelength in metres).
_COLLAPSED_RESOLUTIONS = 8.0
#: A window restarts when the walkers' mean moved by more than this many standard deviations
#: (root mean square over coordinates) since it started ...
_RESTART_SHIFT = 1.0
#: ... or a coordinate's scale changed by more than this factor.
_RESTART_SCALE_RATIO = 2.0
#: Dual-averaging constants of Hoffman & Gelman (2014), NumPyro's defaults.
_DUAL_AVERAGING = dict(t0=10, kappa=0.75, gamma=0.05)


class Preconditioner(NamedTuple):
    """The affine map ``x = loc + L u`` between standardised and model coordinates.

    Attributes:
        loc: Shape ``(dim,)``.
        scale: ``(dim,)`` for a diagonal ``L``, or ``(dim, dim)`` lower-triangular ``L``.
    """

    loc: jax.Array
    scale: jax.Array


def identity_preconditioner(dim: int, dtype=jnp.float32, *, dense: bool = False) -> Preconditioner:
    """The identity map (``loc = 0``, ``L = I``)."""
    scale = jnp.eye(dim, dtype=dtype) if dense else jnp.ones(dim, dtype)
    return Preconditioner(jnp.zeros(dim, dtype), scale)


def ensemble_preconditioner(
    positions: jax.Array, *, dense: bool = False, where: jax.Array | None = None
) -> Preconditioner:
    """The walkers' mean and standard deviations (or covariance Cholesky factor).

    Non-finite positions are ignored. A dense covariance is shrunk toward its diagonal by
    ``5 / (n + 5)`` with ``n`` walkers, so it is positive definite even when ``n <= dim``.

    Args:
        positions: Walker positions, shape ``(..., dim)``: the walkers of one round, or a
            buffer of rounds ``(rounds, walkers, dim)``, pooled without a copy.
        dense: Estimate a full covariance instead of variances.
        where: Boolean mask broadcastable to ``positions.shape[:-1]``: pool only these.

    Returns:
        The preconditioner.

    Example:
        >>> import jax
        >>> x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4096, 2))
        >>> loc, scale = ensemble_preconditioner(x)
        >>> [round(float(v), 1) for v in (*loc, *scale)]
        [3.0, 3.0, 2.0, 2.0]
        >>> far = x.at[:10].set(1e6)  # left out by the mask
        >>> bool(jnp.allclose(ensemble_preconditioner(far, where=jnp.arange(4096) >= 10).loc,
        ...                   ensemble_preconditioner(x[10:]).loc))
        True
    """
    finite = jnp.all(jnp.isfinite(positions), axis=-1, keepdims=True)
    if where is not None:
        finite = finite & jnp.asarray(where)[..., None]
    axes = tuple(range(positions.ndim - 1))
    count = jnp.maximum(jnp.sum(finite), 1).astype(positions.dtype)
    loc = jnp.sum(jnp.where(finite, positions, 0.0), axis=axes) / count
    centred = jnp.where(finite, positions - loc, 0.0)
    # Scaled before squaring: float32 squares overflow past 1.8e19 (a distance in metres).
    unit = jnp.max(jnp.abs(centred), axis=axes)
    unit = jnp.where(unit > 0, unit, 1.0)
    scale = unit * jnp.sqrt(jnp.sum((centred / unit) ** 2, axis=axes) / count)
    # A collapsed coordinate (every walker at the same value, as after `init_to_median`) gets
    # scale 1: any scale would do, and the walkers' own spread replaces it within a window.
    resolution = jnp.finfo(positions.dtype)
    floor = _COLLAPSED_RESOLUTIONS * resolution.eps * jnp.abs(loc)
    resolved = (scale > floor) & (scale > jnp.sqrt(resolution.tiny))
    scale = jnp.where(resolved, scale, 1.0)
    if not dense:
        return Preconditioner(loc, scale)
    # The covariance of the walkers in units of their spread, C = D C_u D with D = diag(unit):
    # its Cholesky factor is D chol(C_u), and no entry of C is ever formed.
    unit = jnp.where(resolved, unit, 1.0)
    flat = (centred / unit).reshape(-1, centred.shape[-1])
    covariance = flat.T @ flat / count
    weight = count / (count + _DENSE_SHRINKAGE_COUNT)
    covariance = weight * covariance + (1.0 - weight) * jnp.diag(jnp.diag(covariance))
    variance = (scale / unit) ** 2
    covariance = covariance + jnp.diag(jnp.maximum(variance - jnp.diag(covariance), 0.0))
    return Preconditioner(loc, unit[:, None] * jnp.linalg.cholesky(covariance))


def to_latent(preconditioner: Preconditioner, position: jax.Array) -> jax.Array:
    """``u = L⁻¹ (x − loc)`` for positions of shape ``(..., dim)``."""
    centred = position - preconditioner.loc
    if preconditioner.scale.ndim == 1:
        return centred / preconditioner.scale
    solve = jax.scipy.linalg.solve_triangular
    return solve(
        preconditioner.scale, centred.reshape(-1, centred.shape[-1]).T, lower=True
    ).T.reshape(centred.shape)


def from_latent(preconditioner: Preconditioner, latent: jax.Array) -> jax.Array:
    """``x = loc + L u`` for latent points of shape ``(..., dim)``."""
    if preconditioner.scale.ndim == 1:
        return preconditioner.loc + preconditioner.scale * latent
    return preconditioner.loc + latent @ preconditioner.scale.T


def precondition_flow(flow: AbstractDistribution, preconditioner: Preconditioner):
    """The distribution of ``loc + L u`` for ``u`` drawn from ``flow``.

    Args:
        flow: A flowjax distribution over the standardised coordinates ``u``.
        preconditioner: The map to model coordinates.

    Returns:
        A flowjax distribution over model coordinates.
    """
    loc, scale = preconditioner
    if scale.ndim == 1:
        return Transformed(flow, Affine(loc, scale))
    # The Cholesky factor as it is: flowjax's default parameterisation (softplus on the
    # diagonal, a local closure) would round-trip it and could not be pickled.
    bijection = eqx.tree_at(lambda b: b.triangular, TriangularAffine(loc, scale), scale)
    return Transformed(flow, bijection)


def preconditioner_scales(preconditioner: Preconditioner) -> jax.Array:
    """Each coordinate's scale: ``L``'s diagonal, or the norms of a dense ``L``'s rows."""
    scale = preconditioner.scale
    return scale if scale.ndim == 1 else jnp.sqrt(jnp.sum(scale**2, axis=1))


def moved_far(current: Preconditioner, reference: Preconditioner) -> jax.Array:
    """Whether the walkers moved or changed scale enough since ``reference`` to restart.

    Args:
        current: The preconditioner estimated now.
        reference: The one estimated when the current window started.

    Returns:
        Boolean scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> ref = Preconditioner(jnp.zeros(2), jnp.ones(2))
        >>> bool(moved_far(Preconditioner(jnp.array([0.5, 0.0]), jnp.ones(2)), ref))
        False
        >>> bool(moved_far(Preconditioner(jnp.array([20.0, 0.0]), jnp.ones(2)), ref))
        True
    """
    reference_scale = preconditioner_scales(reference)
    shift = jnp.sqrt(jnp.mean(((current.loc - reference.loc) / reference_scale) ** 2))
    log_ratio = jnp.abs(jnp.log(preconditioner_scales(current) / reference_scale))
    return (shift > _RESTART_SHIFT) | jnp.any(log_ratio > jnp.log(_RESTART_SCALE_RATIO))


def init_step_size_adaptation(step_size: jax.Array) -> tuple:
    """Start dual averaging from ``step_size``, with ``log ε`` as prox centre.

    NUTS centres on ``log(10 ε)`` right after its step-size search, which biases the first
    iterates upward by a factor ~3 whatever the acceptance. Windows restart here whenever
    the walkers move far, possibly at every round while they travel to the posterior, and
    that bias would then compound into an infinite step: centre on ``log ε`` instead.

    Args:
        step_size: Current step size (its dtype is kept).

    Returns:
        NumPyro's dual-averaging state ``(x_t, x_avg, g_avg, t, prox_center)``, in the step
        size's dtype.
    """
    init_fn, _ = dual_averaging(**_DUAL_AVERAGING)
    state = init_fn(jnp.log(step_size))
    return tuple(jnp.asarray(leaf, step_size.dtype) for leaf in state)


def update_step_size(
    adaptation: tuple, accept_prob: jax.Array, target_accept_prob: float
) -> tuple[jax.Array, jax.Array, tuple]:
    """One dual-averaging update from the round's mean MALA acceptance.

    Args:
        adaptation: Current state.
        accept_prob: Mean acceptance probability of the round (NaN counts as 0).
        target_accept_prob: Target acceptance.

    Returns:
        ``(step_size, final_step_size, adaptation)``: the step size for the next round, the
        averaged one to keep when warm-up ends, and the new state.

    Example:
        >>> import jax.numpy as jnp
        >>> adaptation = init_step_size_adaptation(jnp.array(0.1))
        >>> step, _, _ = update_step_size(adaptation, jnp.array(0.0), 0.574)
        >>> bool(step < 0.1)
        True
    """
    _, update_fn = dual_averaging(**_DUAL_AVERAGING)
    accept_prob = jnp.nan_to_num(accept_prob, nan=0.0)
    state = update_fn(target_accept_prob - accept_prob, adaptation)
    state = tuple(jnp.asarray(new, old.dtype) for new, old in zip(state, adaptation, strict=True))
    log_step, log_step_average = state[0], state[1]
    return jnp.exp(log_step), jnp.exp(log_step_average), state


#: Potential evaluations a MALA step costs: one potential and its gradient, which reverse mode
#: computes for a small multiple of the potential's cost (Griewank & Walther 2008: at most 4–5).
_EVALUATIONS_PER_MALA_STEP = 3


def particle_chunks_per_cost(
    accept_prob_by_chunks: jax.Array, chunk_size: int, num_fresh: int, num_local_steps: int
) -> jax.Array:
    """The number of i-SIR particle chunks that gives the most effective draws per evaluation.

    A round costs one potential evaluation per fresh particle, ``_EVALUATIONS_PER_MALA_STEP``
    per MALA step and one at its start; with ``k`` chunks its global move succeeds with
    probability ``a_k``. A move that proposes from a fixed distribution leaves a lag-one
    autocorrelation of about ``1 - a_k``, so an integrated autocorrelation time of about
    ``(2 - a_k) / a_k`` rounds; the chosen ``k`` maximises ``a_k / (2 - a_k)`` per evaluation:
    a flow that already matches the target needs few particles, a poor one all of them.

    Args:
        accept_prob_by_chunks: ``(num_chunks,)`` mean probability of a global move with the
            first ``k = 1, 2, ...`` chunks.
        chunk_size: Fresh particles per chunk.
        num_fresh: Fresh particles in all (the last chunk may be partial).
        num_local_steps: MALA steps per round.

    Returns:
        The chunk count (int32 scalar, at least 1).

    Example:
        >>> import jax.numpy as jnp
        >>> int(particle_chunks_per_cost(jnp.array([0.6, 0.9, 0.93, 0.95]), 4, 15, 5))
        2
        >>> int(particle_chunks_per_cost(jnp.array([0.05, 0.1, 0.15, 0.2]), 4, 15, 5))
        4
    """
    num_chunks = accept_prob_by_chunks.shape[0]
    num_particles = jnp.minimum(chunk_size * jnp.arange(1, num_chunks + 1), num_fresh)
    cost = num_particles + 1 + _EVALUATIONS_PER_MALA_STEP * num_local_steps
    effective_draws = accept_prob_by_chunks / (2.0 - accept_prob_by_chunks)
    return (jnp.argmax(effective_draws / cost) + 1).astype(jnp.int32)


#: Robbins–Monro gain exponent for the log step size: in (1/2, 1] for convergence of the
#: stochastic approximation; 0.6 is the value of Andrieu & Thoms (2008)'s examples.
_STEP_SIZE_GAIN_EXPONENT = 0.6


def adapt_step_size(step_size, mean_accept_prob, target_accept_prob, round_index):
    """One Robbins–Monro update of the MALA step size toward a target acceptance.

    Args:
        step_size: Current step size.
        mean_accept_prob: Mean MALA acceptance over the walkers and the round's steps.
        target_accept_prob: Target acceptance.
        round_index: Rounds done so far (sets the gain).

    Returns:
        The new step size.

    Example:
        >>> float(adapt_step_size(0.1, 1.0, 0.5, 0)) > 0.1
        True
    """
    gain = (round_index + 1.0) ** -_STEP_SIZE_GAIN_EXPONENT
    return step_size * jnp.exp(gain * (mean_accept_prob - target_accept_prob))
