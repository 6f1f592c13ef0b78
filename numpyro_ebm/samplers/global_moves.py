"""Global moves with a normalizing flow as proposal: i-SIR and independent Metropolis–Hastings.

Both moves target ``π ∝ exp(-U)`` and use the importance log-weight
``log w(x) = -U(x) - log q(x)`` of a point under the flow ``q``.

- **i-SIR** ([A] Alg. 5, what [A] runs): the current state is particle 1, ``N - 1`` fresh
  particles are drawn from ``q``, and the next state is drawn among the ``N`` with probability
  proportional to ``w``. Particles are drawn in chunks and the draw is made on the fly with the
  Gumbel-max trick, so memory is ``O(num_walkers × chunk_size × dim)`` whatever ``N`` is.
- **Independent MH:** propose ``x' ~ q``, accept with ``min(1, w(x') / w(x))``.

A proposal whose potential or flow density is not finite gets weight 0 (it is never picked) and
is counted in :class:`GlobalInfo`.

Both moves also say which walkers are **stranded**: a walker whose weight exceeds every fresh
proposal's of the move (over all walkers) by a factor ``e^STRANDED_LOG_MARGIN`` sits where the
flow puts almost no mass. Global moves can then neither take it away nor bring others there, so
that region's weight rests on the local moves alone (see :func:`stranded_walkers`).

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flowjax.distributions import AbstractDistribution

from numpyro_ebm._checks import typed_key

__all__ = [
    "STRANDED_LOG_MARGIN",
    "GlobalInfo",
    "imh_step",
    "importance_log_weight",
    "isir_step",
    "stranded_walkers",
]

PotentialFn = Callable[[jax.Array], jax.Array]

#: A walker is stranded when its importance weight exceeds every fresh proposal's by more than
#: this many nats (a factor of ~22000): with i-SIR's default 31 fresh particles it moves with
#: probability below 1.4e-3 per round, and proposals land near it as rarely. A flow that covers
#: the target leaves the walkers' log weights within a few nats of the proposals'.
STRANDED_LOG_MARGIN = 10.0


class GlobalInfo(NamedTuple):
    """Diagnostics of one global move, per walker.

    Attributes:
        accept_prob: For i-SIR, the probability that the pick is not the current state; for
            independent MH, the acceptance probability.
        accepted: Whether the walker moved.
        num_nonfinite: Number of this walker's proposals with a non-finite weight.
        accept_prob_by_chunks: ``(num_walkers, num_chunks)``: for i-SIR, the probability of
            moving had only the first ``k`` chunks of particles been drawn, ``k = 1, 2, ...``
            (chunks left out of the move repeat the last drawn one's value); independent MH
            has one column, its ``accept_prob``.
        stranded: Whether the walker was stranded before the move (see
            :func:`stranded_walkers`).
    """

    accept_prob: jax.Array
    accepted: jax.Array
    num_nonfinite: jax.Array
    accept_prob_by_chunks: jax.Array
    stranded: jax.Array


def stranded_walkers(current_log_weight: jax.Array, proposal_log_weight: jax.Array) -> jax.Array:
    """Walkers whose log weight exceeds every proposal's by more than ``STRANDED_LOG_MARGIN``.

    The proposals of all walkers are pooled: a walker is compared with everything the flow
    drew in the move, not only its own particles.

    Args:
        current_log_weight: ``log w`` of each walker, ``(num_walkers,)``.
        proposal_log_weight: ``log w`` of the move's fresh proposals, any shape (``-inf`` for
            non-finite ones).

    Returns:
        A boolean per walker; all False when no proposal has a finite weight (then the flow
        proposes nothing at all, which the global acceptance reports).

    Example:
        >>> import jax.numpy as jnp
        >>> stranded_walkers(jnp.array([0.5, 30.0]), jnp.array([0.0, 1.0, -2.0])).tolist()
        [False, True]
    """
    best = jnp.max(proposal_log_weight)
    return jnp.isfinite(best) & (current_log_weight > best + STRANDED_LOG_MARGIN)


def importance_log_weight(potential_energy: jax.Array, flow_log_prob: jax.Array) -> jax.Array:
    """``log π(x) - log q(x)`` up to a constant, with ``-inf`` wherever it is not a number.

    Args:
        potential_energy: ``U(x)``.
        flow_log_prob: ``log q(x)``.

    Returns:
        The log importance weight.

    Example:
        >>> import jax.numpy as jnp
        >>> importance_log_weight(jnp.array([1.0, jnp.nan]), jnp.array([-2.0, 0.0]))
        Array([  1., -inf], dtype=float32)
    """
    log_weight = -potential_energy - flow_log_prob
    return jnp.where(jnp.isnan(log_weight) | (log_weight == jnp.inf), -jnp.inf, log_weight)


def _draw_and_weigh(rng_key, flow, potential_fn, num: int, dtype):
    """Draw ``num`` flow samples (flat batch) with their potentials and log weights."""
    position, flow_log_prob = flow.sample_and_log_prob(rng_key, (num,))
    position = position.astype(dtype)
    potential_energy = jax.vmap(potential_fn)(position)
    return position, potential_energy, importance_log_weight(potential_energy, flow_log_prob)


def isir_step(
    rng_key: jax.Array,
    position: jax.Array,
    potential_energy: jax.Array,
    flow: AbstractDistribution,
    potential_fn: PotentialFn,
    *,
    num_particles: int,
    chunk_size: int,
    num_active_chunks: jax.Array | int | None = None,
) -> tuple[jax.Array, jax.Array, GlobalInfo]:
    """One i-SIR step for every walker, drawing fresh particles in chunks.

    With ``num_active_chunks`` set, only the first that many chunks are drawn (the others cost
    nothing): an i-SIR step with ``1 + min(num_active_chunks * chunk_size, N - 1)`` particles,
    valid for any count that does not depend on the current positions.

    Args:
        rng_key: PRNG key.
        position: Current positions, shape ``(num_walkers, dim)``.
        potential_energy: ``U`` at ``position``, shape ``(num_walkers,)``.
        flow: Proposal distribution over ``(dim,)``.
        potential_fn: ``U`` of one flat position.
        num_particles: ``N``, the current state included (``N >= 2``).
        chunk_size: Fresh particles per walker drawn at once (``1 <= chunk_size``).
        num_active_chunks: Chunks to draw (a scalar, may be traced); ``None``: all.

    Returns:
        ``(position, potential_energy, info)`` after the move.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flowjax.distributions import Normal
        >>> U = lambda x: 0.5 * x @ x
        >>> x0 = jnp.zeros((8, 2))
        >>> x, u, info = isir_step(jax.random.key(0), x0, jax.vmap(U)(x0), Normal(jnp.zeros(2)),
        ...                        U, num_particles=4, chunk_size=2)
        >>> x.shape, info.accept_prob.shape
        ((8, 2), (8,))
    """
    num_walkers, dim = position.shape
    num_fresh = num_particles - 1
    num_chunks = -(-num_fresh // chunk_size)
    key_current, key_chunks = jax.random.split(typed_key(rng_key))

    current_log_weight = importance_log_weight(potential_energy, flow.log_prob(position))
    current_score = current_log_weight + jax.random.gumbel(key_current, (num_walkers,))
    initial = (
        current_score,  # best Gumbel-perturbed log weight so far
        position,
        potential_energy,
        current_log_weight,  # running log-sum-exp of all weights
        jnp.zeros(num_walkers, jnp.int32),
        jnp.full((), -jnp.inf, current_log_weight.dtype),  # best fresh weight of all walkers
    )

    def add_chunk(carry, inputs):
        key, chunk_index = inputs
        if num_active_chunks is None:
            carry, moved = draw_chunk(carry, key, chunk_index)
        else:  # a chunk past the active ones is skipped, not computed and masked
            carry, moved = jax.lax.cond(
                chunk_index < num_active_chunks,
                draw_chunk,
                lambda carry, *_: (carry, jnp.zeros(num_walkers, bool)),
                carry, key, chunk_index,
            )  # fmt: skip
        return carry, (moved, carry[3])  # carry[3]: the log-sum-exp of the weights so far

    def draw_chunk(carry, key, chunk_index):
        best_score, best_position, best_energy, log_total, num_nonfinite, best_fresh = carry
        key_draw, key_gumbel = jax.random.split(key)
        draws, energy, log_weight = _draw_and_weigh(
            key_draw, flow, potential_fn, num_walkers * chunk_size, position.dtype
        )
        draws = draws.reshape(num_walkers, chunk_size, dim)
        energy = energy.reshape(num_walkers, chunk_size)
        log_weight = log_weight.reshape(num_walkers, chunk_size)
        # The last chunk may run past N - 1 particles: those slots get weight 0.
        in_range = chunk_index * chunk_size + jnp.arange(chunk_size) < num_fresh
        log_weight = jnp.where(in_range, log_weight, -jnp.inf)
        # int32 sum: under `jax_enable_x64` a bool sum is int64 and would change the carry type.
        num_nonfinite += jnp.sum(in_range & (log_weight == -jnp.inf), axis=1, dtype=jnp.int32)
        score = log_weight + jax.random.gumbel(key_gumbel, log_weight.shape)
        pick = jnp.argmax(score, axis=1)
        chunk_best = jnp.take_along_axis(score, pick[:, None], axis=1)[:, 0]
        better = chunk_best > best_score
        rows = jnp.arange(num_walkers)
        best_position = jnp.where(better[:, None], draws[rows, pick], best_position)
        best_energy = jnp.where(better, energy[rows, pick], best_energy)
        log_total = jnp.logaddexp(log_total, jax.nn.logsumexp(log_weight, axis=1))
        return (
            jnp.maximum(best_score, chunk_best),
            best_position,
            best_energy,
            log_total,
            num_nonfinite,
            jnp.maximum(best_fresh, jnp.max(log_weight)),
        ), better

    keys = jax.random.split(key_chunks, num_chunks)
    final, (moved_per_chunk, log_totals) = jax.lax.scan(
        add_chunk, initial, (keys, jnp.arange(num_chunks))
    )
    _, new_position, new_energy, _, num_nonfinite, best_fresh = final
    accepted = jnp.any(moved_per_chunk, axis=0)
    accept_prob_by_chunks = _move_prob(current_log_weight, log_totals.T)
    info = GlobalInfo(
        accept_prob_by_chunks[:, -1],
        accepted,
        num_nonfinite,
        accept_prob_by_chunks,
        stranded_walkers(current_log_weight, best_fresh),
    )
    return new_position, new_energy, info


def _move_prob(current_log_weight: jax.Array, log_total: jax.Array) -> jax.Array:
    """P(pick != current) = 1 - w_current / Σ w.

    A current state of weight 0 moves to any particle of positive weight; if no particle has
    one (a flow with no finite density, say), it stays: probability 0, not 1.
    """
    current_log_weight = current_log_weight.reshape(-1, *(1,) * (log_total.ndim - 1))
    stay_prob = jnp.exp(current_log_weight - log_total)
    weightless_moves = (log_total > -jnp.inf).astype(stay_prob.dtype)
    accept_prob = jnp.where(jnp.isfinite(current_log_weight), 1.0 - stay_prob, weightless_moves)
    return jnp.where(jnp.isnan(accept_prob), 0.0, accept_prob)


def imh_step(
    rng_key: jax.Array,
    position: jax.Array,
    potential_energy: jax.Array,
    flow: AbstractDistribution,
    potential_fn: PotentialFn,
) -> tuple[jax.Array, jax.Array, GlobalInfo]:
    """One independent Metropolis–Hastings step with the flow as proposal, for every walker.

    Args:
        rng_key: PRNG key.
        position: Current positions, shape ``(num_walkers, dim)``.
        potential_energy: ``U`` at ``position``, shape ``(num_walkers,)``.
        flow: Proposal distribution over ``(dim,)``.
        potential_fn: ``U`` of one flat position.

    Returns:
        ``(position, potential_energy, info)`` after the move.
    """
    num_walkers = position.shape[0]
    key_draw, key_accept = jax.random.split(typed_key(rng_key))
    current_log_weight = importance_log_weight(potential_energy, flow.log_prob(position))
    draws, energy, log_weight = _draw_and_weigh(
        key_draw, flow, potential_fn, num_walkers, position.dtype
    )
    log_ratio = log_weight - current_log_weight
    # A current state of weight 0 (log ratio +inf or nan with both -inf) moves to any finite draw.
    log_ratio = jnp.where(
        current_log_weight == -jnp.inf, jnp.where(log_weight > -jnp.inf, 0.0, -jnp.inf), log_ratio
    )
    log_uniform = jnp.log(jax.random.uniform(key_accept, (num_walkers,)))
    accepted = log_uniform < log_ratio
    new_position = jnp.where(accepted[:, None], draws, position)
    new_energy = jnp.where(accepted, energy, potential_energy)
    num_nonfinite = (log_weight == -jnp.inf).astype(jnp.int32)
    accept_prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
    return (
        new_position,
        new_energy,
        GlobalInfo(
            accept_prob,
            accepted,
            num_nonfinite,
            accept_prob[:, None],
            stranded_walkers(current_log_weight, log_weight),
        ),
    )
