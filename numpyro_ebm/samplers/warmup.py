"""The warm-up state of a flowMC run and its update after each adapting round.

:class:`FlowMCAdaptation` holds everything that adapts (step size, preconditioner, window, flow
parameters and their optimizer, the positions the flow is fitted on); :func:`adapt` updates it
from a round's moves and :func:`fit_on_buffer` fits the flow on the current window. The pure
estimators they use are in :mod:`~numpyro_ebm.samplers.adaptation`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from numpyro_ebm.flows import fit_flow
from numpyro_ebm.samplers.adaptation import (
    Preconditioner,
    ensemble_preconditioner,
    init_step_size_adaptation,
    moved_far,
    particle_chunks_per_cost,
    preconditioner_scales,
    to_latent,
    update_step_size,
)
from numpyro_ebm.samplers.fit_progress import (
    FitProgress,
    init_fit_progress,
    smooth_accept_prob,
    still_fitting,
    update_fit_progress,
)

if TYPE_CHECKING:  # the round's configuration; flowmc imports this module
    from numpyro_ebm.samplers.flowmc import FlowMCConfig

__all__ = [
    "FlowMCAdaptation",
    "adapt",
    "count_particles",
    "fit_on_buffer",
    "record_round",
    "hold_flat_coordinates",
    "unbounded_coordinates",
    "init_adaptation",
    "preconditioner_points",
]


class FlowMCAdaptation(NamedTuple):
    """What a round needs from the previous one besides the walkers' positions.

    Attributes:
        step_size: MALA step size in the preconditioned coordinates (scalar): the current
            dual-averaging iterate, used while adapting.
        step_size_average: The averaged iterate, used once adaptation stops.
        step_size_adaptation: Dual-averaging state (see :mod:`~numpyro_ebm.samplers.adaptation`).
        preconditioner: The map ``x = loc + L u`` in use.
        window_reference: The preconditioner when the current adaptation window started.
        window_start: Round at which the current window started.
        flow_params: Trainable arrays of the flow.
        opt_state: The flow optimizer's state.
        buffer: The walkers' positions at the last rounds, ``(buffer_size, num_walkers, dim)``,
            used to fit the flow (rows older than the window are ignored).
        fit_progress: Smoothed global acceptance, which says when fitting stopped paying.
        particle_accept: ``(num_chunks,)`` smoothed global acceptance with the first ``k``
            chunks of i-SIR particles, measured while all are drawn.
        particle_chunks: Chunks of i-SIR particles drawn once fitting has stopped and after
            warm-up: the count that moves most walkers per potential evaluation.
        flat: ``(dim,)``: the coordinates found flat (improper) in the last adapting round
            (see :func:`hold_flat_coordinates`; never with a dense preconditioner), which the
            end-of-warm-up check names.
        round_index: Rounds done so far (also the buffer's write cursor).
        num_warmup: Rounds of adaptation: a round adapts while ``round_index < num_warmup``.
            In the state rather than the kernel, so that ``MCMC`` objects sharing a kernel
            each keep their own warm-up (as NUTS's schedule lives in its state).
    """

    step_size: jax.Array
    step_size_average: jax.Array
    step_size_adaptation: tuple
    preconditioner: Preconditioner
    window_reference: Preconditioner
    window_start: jax.Array
    flow_params: Any
    opt_state: Any
    buffer: jax.Array
    fit_progress: FitProgress
    particle_accept: jax.Array
    particle_chunks: jax.Array
    flat: jax.Array
    round_index: jax.Array
    num_warmup: jax.Array


def init_adaptation(
    position: jax.Array,
    flow_params: Any,
    opt_state: Any,
    *,
    step_size: float,
    buffer_size: int,
    dense_preconditioner: bool = False,
    num_particle_chunks: int = 1,
    num_warmup: int = 0,
) -> FlowMCAdaptation:
    """The adaptation state before the first round: preconditioner from the walkers.

    Args:
        position: Initial walker positions, ``(num_walkers, dim)``.
        flow_params: Trainable arrays of the flow.
        opt_state: The flow optimizer's state for ``flow_params``.
        step_size: Initial MALA step size (in preconditioned coordinates).
        buffer_size: Rounds of positions kept to fit the flow.
        dense_preconditioner: Estimate a dense preconditioner.
        num_particle_chunks: Chunks of i-SIR particles per round (all are drawn at first).
        num_warmup: Rounds of adaptation.

    Returns:
        The state.
    """
    dtype = position.dtype
    preconditioner = ensemble_preconditioner(position, dense=dense_preconditioner)
    step = jnp.asarray(step_size, dtype)
    return FlowMCAdaptation(
        step_size=step,
        step_size_average=step,
        step_size_adaptation=init_step_size_adaptation(step),
        preconditioner=preconditioner,
        window_reference=preconditioner,
        window_start=jnp.zeros((), jnp.int32),
        fit_progress=init_fit_progress(dtype),
        particle_accept=jnp.zeros(num_particle_chunks, dtype),
        particle_chunks=jnp.asarray(num_particle_chunks, jnp.int32),
        flat=jnp.zeros(position.shape[1], bool),
        flow_params=flow_params,
        opt_state=opt_state,
        buffer=jnp.broadcast_to(position, (buffer_size, *position.shape)),
        round_index=jnp.zeros((), jnp.int32),
        num_warmup=jnp.asarray(num_warmup, jnp.int32),
    )


def fit_on_buffer(rng_key, state: FlowMCAdaptation, flow_static, config: FlowMCConfig):
    """Fit the flow on the buffer rows written in the current window (others are masked)."""
    _, num_walkers, dim = state.buffer.shape
    written_at = _rounds_written(state)
    current = (written_at >= state.window_start) & (written_at >= 0)
    # Mini-batches are standardised as they are drawn: the buffer is never copied whole.
    standardise = partial(to_latent, state.preconditioner) if config.standardise_flow else None
    params, opt_state, loss = fit_flow(
        rng_key,
        state.flow_params,
        state.opt_state,
        flow_static,
        state.buffer.reshape(-1, dim),
        row_mask=jnp.repeat(current, num_walkers),
        batch_transform=standardise,
        optimizer=config.optimizer,
        num_steps=config.num_fit_steps,
        batch_size=config.fit_batch_size,
        batch_sharding=config.batch_sharding,
    )
    return params, opt_state, loss.astype(state.buffer.dtype)


def _rounds_written(state: FlowMCAdaptation) -> jax.Array:
    """The round at which each buffer row was last written (negative: never), ``(rows,)``."""
    buffer_size = state.buffer.shape[0]
    age = (state.round_index - jnp.arange(buffer_size)) % buffer_size
    return state.round_index - age


def preconditioner_points(state: FlowMCAdaptation) -> tuple[jax.Array, jax.Array]:
    """The positions the preconditioner is estimated from: the buffer's rounds, this one's last.

    Not this round's alone: with few walkers a small mode can empty for a while, and an
    estimate from the other walkers would shrink onto them, put that mode out of the flow's
    reach and lose it for good (notebook 01's posterior with 32 walkers lost a mode of weight
    0.18 in 4 of 6 seeds; in none with the buffer pooled in). Rows not written yet (the
    buffer starts as copies of the initial positions) are left out: they held the estimate
    at the initial spread until the last one was overwritten, and its jump then moved the
    flow, which lives in the preconditioned coordinates, off the walkers.

    Returns:
        The buffer ``(rounds, walkers, dim)``, this round recorded by :func:`record_round`,
        and a mask ``(rounds, 1)`` of the rows to pool.
    """
    return state.buffer, (_rounds_written(state) >= 0)[:, None]


def _tree_where(condition: jax.Array, if_true: Any, if_false: Any) -> Any:
    """``jnp.where(condition, ·, ·)`` leaf by leaf over two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), if_true, if_false)


#: How far, in preconditioner scales, :func:`unbounded_coordinates` looks along a coordinate.
_PROBE_REACH = 1e3


def unbounded_coordinates(
    potential_fn: Callable[[jax.Array], jax.Array],
    position: jax.Array,
    preconditioner: Preconditioner,
) -> jax.Array:
    """Which coordinates leave the potential unchanged ``1000`` scales away on both sides.

    A zero gradient at every walker does not make a coordinate improper: inside a hard box
    (a potential that is infinite outside it, as flowMC users write bounded priors) the
    gradient is zero too. Only a coordinate along which the potential stays the same far away
    is held (:func:`hold_flat_coordinates`); a box's edge makes it infinite there.

    Args:
        potential_fn: ``U`` of one position ``(d,)``.
        position: One walker's position ``(d,)``.
        preconditioner: The scales that set how far to look.

    Returns:
        Boolean ``(d,)``. Costs ``2 d`` potential evaluations.

    Example:
        >>> import jax.numpy as jnp
        >>> box = lambda x: jnp.where(jnp.all(jnp.abs(x) < 10), 0.5 * x[0] ** 2, jnp.inf)
        >>> scales = Preconditioner(jnp.zeros(3), jnp.ones(3))
        >>> unbounded_coordinates(box, jnp.zeros(3), scales).tolist()
        [False, False, False]
        >>> unbounded_coordinates(lambda x: 0.5 * x[0] ** 2, jnp.zeros(3), scales).tolist()
        [False, True, True]
    """
    reach = _PROBE_REACH * jnp.diag(preconditioner_scales(preconditioner))
    probes = jnp.concatenate([position + reach, position - reach])
    here = potential_fn(position)
    there = jax.vmap(potential_fn)(probes).reshape(2, -1)
    tolerance = 1e-6 * jnp.maximum(jnp.abs(here), 1.0)
    return jnp.all(jnp.isfinite(there) & (jnp.abs(there - here) <= tolerance), axis=0)


def hold_flat_coordinates(
    estimate: Preconditioner, previous: Preconditioner, flat: jax.Array
) -> Preconditioner:
    """``estimate``, except in the ``flat`` coordinates, where ``previous`` is kept.

    A coordinate on which the potential does not depend (its gradient is zero at every walker
    and :func:`unbounded_coordinates` finds it unchanged far away, as for the observed entries
    of a site with NumPyro's ``obs_mask``) makes the target improper: the walkers spread there
    without bound. Re-estimated from that spread, the preconditioner widens the steps, which
    widen the spread, round after round, until the potential overflows and the step size of
    every coordinate collapses. Held, it leaves the flat coordinates to spread slowly and the
    others to adapt. Flat coordinates are detected with the diagonal preconditioner only (a
    dense one mixes the gradient's coordinates).

    Args:
        estimate: The preconditioner estimated from the walkers now.
        previous: The one in use.
        flat: Boolean mask of the flat coordinates, shape ``(d,)``.

    Returns:
        The preconditioner to use.

    Example:
        >>> import jax.numpy as jnp
        >>> new, old = Preconditioner(jnp.ones(2), jnp.full(2, 9.0)), Preconditioner(
        ...     jnp.zeros(2), jnp.ones(2))
        >>> hold_flat_coordinates(new, old, jnp.array([False, True])).scale.tolist()
        [9.0, 1.0]
    """
    if estimate.scale.ndim != 1:
        raise ValueError("expected a diagonal preconditioner, got a dense one")
    return _tree_where(flat, previous, estimate)


def adapt(
    state: FlowMCAdaptation,
    accept_prob: jax.Array,
    global_accept_prob: jax.Array,
    flat: jax.Array,
    config: FlowMCConfig,
    uncovered: jax.Array | bool = False,
) -> FlowMCAdaptation:
    """Update the preconditioner, the window and the step size, once the round is recorded.

    ``flat`` marks the coordinates whose potential gradient was zero at every walker: their
    preconditioner is held (see :func:`hold_flat_coordinates`). ``uncovered`` says that a
    walker was stranded where the flow has almost no mass: fitting goes on (or starts again)
    however flat the global acceptance (see :func:`~.fit_progress.update_fit_progress`).
    """
    positions, rows = preconditioner_points(state)
    estimate = ensemble_preconditioner(positions, dense=config.dense_preconditioner, where=rows)
    if not config.dense_preconditioner:
        estimate = hold_flat_coordinates(estimate, state.preconditioner, flat)
    restart = moved_far(estimate, state.window_reference)
    step_size, step_size_average, adaptation = update_step_size(
        state.step_size_adaptation, jnp.mean(accept_prob), config.target_accept_prob
    )
    if config.num_local_steps == 0:  # nothing to adapt the step size on
        step_size, step_size_average = state.step_size, state.step_size_average
        adaptation = state.step_size_adaptation
    fit_progress = update_fit_progress(state.fit_progress, jnp.mean(global_accept_prob), uncovered)

    def unless_restart(kept, fresh):
        return _tree_where(restart, fresh, kept)

    # A new window forgets what was learned at the old location and scale: dual averaging and
    # the fitting plateau start again, and the window's reference is the new preconditioner.
    adaptation = unless_restart(adaptation, init_step_size_adaptation(step_size))
    fit_progress = unless_restart(fit_progress, init_fit_progress(state.buffer.dtype))
    # The default flow lives in the preconditioned coordinates: once fitting has stopped they
    # stay as they are until a new window, or the frozen flow would drift off the walkers as
    # the estimate jitters, and the walkers with it.
    frozen = ~still_fitting(fit_progress, config.fit_patience)
    preconditioner = _tree_where(frozen, state.preconditioner, estimate)
    return state._replace(
        flat=flat & (not config.dense_preconditioner),
        fit_progress=fit_progress,
        step_size=step_size,
        step_size_average=step_size_average,
        step_size_adaptation=adaptation,
        preconditioner=preconditioner,
        window_reference=unless_restart(state.window_reference, estimate),
        window_start=jnp.where(restart, state.round_index, state.window_start),
    )


def record_round(buffer: jax.Array, round_index: jax.Array, position: jax.Array, adapting):
    """``buffer`` with this round's ``position`` written in its row if ``adapting``.

    Written in place by XLA, outside the branch that adapts: a ``lax.cond`` returning the
    buffer copied all of it every round, sampling rounds included.
    """
    row = round_index % buffer.shape[0]
    return buffer.at[row].set(jnp.where(adapting, position, buffer[row]))


def count_particles(
    state: FlowMCAdaptation, accept_prob_by_chunks, all_drawn, config: FlowMCConfig
) -> FlowMCAdaptation:
    """Update the number of i-SIR particle chunks to draw after a round.

    Args:
        state: Adaptation state.
        accept_prob_by_chunks: ``(num_walkers, num_chunks)`` probability of a global move with
            the first ``k`` chunks (see :class:`~numpyro_ebm.samplers.GlobalInfo`).
        all_drawn: Whether the round drew every chunk while adapting (boolean scalar); only
            such rounds measure the acceptance of every count.
        config: Hyperparameters (``chunk_size``, ``num_particles``, ``num_local_steps``).

    Returns:
        The state with the smoothed acceptance per count and the count to draw.
    """
    measured = smooth_accept_prob(state.particle_accept, jnp.mean(accept_prob_by_chunks, axis=0))
    particle_accept = jnp.where(all_drawn, measured, state.particle_accept)
    best = particle_chunks_per_cost(
        particle_accept, config.chunk_size, config.num_particles - 1, config.num_local_steps
    )
    return state._replace(
        particle_accept=particle_accept,
        particle_chunks=jnp.where(all_drawn, best, state.particle_chunks),
    )
