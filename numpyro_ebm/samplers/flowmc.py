"""The flow-assisted MCMC round of flowMC ([A] Alg. 5), as pure functions over flat walkers.

A round is one global move with the flow (i-SIR or independent MH), then ``num_local_steps``
MALA steps. While ``adapting`` is true (warm-up, or inside EBM training), the round also

1. re-estimates the preconditioner from the walkers and restarts the adaptation window if they
   moved far, moves the MALA step size toward ``target_accept_prob`` (dual averaging), and
2. every ``fit_every`` rounds, until the global acceptance plateaus, fits the flow by maximum
   likelihood on the walkers' positions of the current window
   (:mod:`~numpyro_ebm.samplers.warmup`).

Outside adaptation the flow, preconditioner and step size are frozen, so the rounds form a
fixed Markov kernel that leaves the target invariant.

:class:`FlowMCKernel <numpyro_ebm.FlowMCKernel>` is the NumPyro adapter of this module; the
trainer calls it through that adapter.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from numpyro_ebm._checks import typed_key
from numpyro_ebm.flows import merge_flow
from numpyro_ebm.samplers.adaptation import from_latent, precondition_flow, to_latent
from numpyro_ebm.samplers.fit_progress import still_fitting
from numpyro_ebm.samplers.global_moves import imh_step, isir_step
from numpyro_ebm.samplers.langevin import init_walkers, mala_step, nonfinite_to_inf
from numpyro_ebm.samplers.warmup import (
    FlowMCAdaptation,
    adapt,
    count_particles,
    fit_on_buffer,
    record_round,
    unbounded_coordinates,
)

__all__ = [
    "FlowMCConfig",
    "FlowMCRoundInfo",
    "flowmc_round",
    "proposal_flow",
]

PotentialFn = Callable[[jax.Array], jax.Array]
GlobalMove = Literal["isir", "imh", "none"]


class FlowMCConfig(NamedTuple):
    """Hyperparameters of a round, fixed for a run (hashable, so they can be static).

    Attributes:
        num_local_steps: MALA steps per round.
        global_move: ``"isir"``, ``"imh"`` or ``"none"`` (MALA only).
        num_particles: i-SIR particles ``N``, the current state included.
        chunk_size: i-SIR fresh particles per walker drawn at once (bounds memory).
        target_accept_prob: MALA acceptance the step size is adapted toward.
        fit_flow: Whether to fit the flow while adapting.
        fit_every: Rounds between flow fits while adapting.
        num_fit_steps: Gradient steps per flow fit.
        fit_batch_size: Points per flow gradient step.
        optimizer: The optax optimizer of the flow.
        dense_preconditioner: Precondition with the walkers' covariance instead of their
            variances.
        standardise_flow: The flow lives in the preconditioned coordinates ``u`` (the default
            flow); otherwise it is a user's flow over model coordinates, used as given.
        fit_patience: Stop fitting the flow, until the next window, after this many adapting
            rounds without a gain in the smoothed global acceptance; ``None`` never stops (as
            inside EBM training, where the target keeps moving).
        adapt_num_particles: Once fitting has stopped, and after warm-up, draw only the i-SIR
            particle chunks that move most walkers per potential evaluation (measured while
            every chunk is drawn); otherwise always draw ``num_particles``.
        settle_rounds: The first rounds of warm-up make local moves only, so that walkers
            started far from the modes settle into the basins they start in before the flow,
            fitted on their way there, moves them. :class:`~numpyro_ebm.FlowMCKernel` settles for
            10 rounds when it fits its own flow, and not at all with a flow it is given.
        batch_sharding: Split each flow-fitting batch over devices this way (the walkers'
            sharding when they are split over a mesh); ``None`` leaves the layout to XLA.
    """

    num_local_steps: int
    global_move: GlobalMove
    num_particles: int
    chunk_size: int
    target_accept_prob: float
    fit_flow: bool
    fit_every: int
    num_fit_steps: int
    fit_batch_size: int
    optimizer: optax.GradientTransformation
    dense_preconditioner: bool = False
    standardise_flow: bool = True
    fit_patience: int | None = None
    adapt_num_particles: bool = False
    settle_rounds: int = 0
    batch_sharding: jax.sharding.NamedSharding | None = None


class FlowMCRoundInfo(NamedTuple):
    """Per-walker diagnostics of a round.

    Attributes:
        potential_energy: ``U`` at the new positions.
        accept_prob: Mean MALA acceptance probability over the round's local steps.
        global_accept_prob: Acceptance probability of the global move (0 without one).
        num_nonfinite: Proposals of the round (global and local) whose potential was not finite.
        flow_loss: Loss of the last flow fit (NaN when the flow was not fitted this round);
            a scalar, not per walker.
        step_size: The MALA step size the round used (scalar).
        stranded: Whether the walker was stranded at the global move: its importance weight
            exceeded every proposal's by ``e^10`` (see
            :func:`~numpyro_ebm.samplers.global_moves.stranded_walkers`); False without one.
    """

    potential_energy: jax.Array
    accept_prob: jax.Array
    global_accept_prob: jax.Array
    num_nonfinite: jax.Array
    flow_loss: jax.Array
    step_size: jax.Array
    stranded: jax.Array


def proposal_flow(state: FlowMCAdaptation, flow_static: Any, config: FlowMCConfig):
    """The flow over model coordinates that the round proposes from."""
    flow = merge_flow(state.flow_params, flow_static)
    if config.standardise_flow:
        return precondition_flow(flow, state.preconditioner)
    return flow


def _global_move(
    rng_key, position, potential_energy, flow, potential_fn, config: FlowMCConfig, num_chunks
):
    if config.global_move == "isir":
        return isir_step(
            rng_key,
            position,
            potential_energy,
            flow,
            potential_fn,
            num_particles=config.num_particles,
            chunk_size=config.chunk_size,
            num_active_chunks=num_chunks if config.adapt_num_particles else None,
        )
    return imh_step(rng_key, position, potential_energy, flow, potential_fn)


def _local_moves(
    rng_key, position, potential_energy, potential_fn, preconditioner, step_size, num_steps: int
):
    """``num_steps`` MALA steps in the preconditioned coordinates ``u = L⁻¹ (x − loc)``.

    A walker whose every step was rejected keeps its exact position (no round trip through
    ``u``); a moved one is at ``loc + L u``, where its potential was computed. Also returns
    which coordinates of ``u`` had a zero potential gradient at every walker (flat ones).
    """
    num_walkers = position.shape[0]
    if num_steps == 0:  # global moves only: nothing to average, nothing to adapt
        zeros = jnp.zeros(num_walkers, position.dtype)
        flat = jnp.zeros(position.shape[1], bool)
        return position, potential_energy, zeros, jnp.zeros(num_walkers, jnp.int32), flat

    def latent_potential(latent):
        return potential_fn(from_latent(preconditioner, latent))

    def one_step(walkers, key):
        walkers, info = mala_step(key, walkers, latent_potential, step_size)
        return walkers, (info.accept_prob, info.nonfinite)

    start = init_walkers(to_latent(preconditioner, position), latent_potential)
    walkers, (accept_prob, nonfinite) = jax.lax.scan(
        one_step, start, jax.random.split(rng_key, num_steps)
    )
    moved = jnp.any(walkers.position != start.position, axis=1)
    position = jnp.where(moved[:, None], from_latent(preconditioner, walkers.position), position)
    potential_energy = jnp.where(moved, walkers.potential_energy, potential_energy)
    return (
        position,
        potential_energy,
        jnp.mean(accept_prob, axis=0),
        jnp.sum(nonfinite, axis=0, dtype=jnp.int32),
        jnp.all(walkers.potential_grad == 0, axis=0),  # in x too, for a diagonal L
    )


def flowmc_round(
    rng_key: jax.Array,
    position: jax.Array,
    state: FlowMCAdaptation,
    potential_fn: PotentialFn,
    flow_static: Any,
    config: FlowMCConfig,
    adapting: jax.Array,
) -> tuple[jax.Array, FlowMCAdaptation, FlowMCRoundInfo]:
    """One flowMC round: a global flow move, local MALA moves, and adaptation if ``adapting``.

    The potential is evaluated afresh at the start of the round, so the target may change
    between rounds (as it does during EBM training). While adapting, the round uses the
    current dual-averaging step size, then re-estimates the preconditioner from the walkers,
    restarts the window if they moved far, and fits the flow on the window's positions;
    otherwise everything is frozen and the averaged step size is used.

    Args:
        rng_key: PRNG key (typed or raw).
        position: Walker positions, ``(num_walkers, dim)``.
        state: Adaptation state after the previous round.
        potential_fn: ``U`` of one flat position.
        flow_static: The non-trainable part of the flow (see :func:`numpyro_ebm.flows.split_flow`).
        config: Hyperparameters.
        adapting: Boolean scalar: adapt the step size and fit the flow this round.

    Returns:
        The new positions, the new adaptation state and the round's diagnostics.
    """
    key_global, key_local, key_fit = jax.random.split(typed_key(rng_key), 3)
    potential_energy = nonfinite_to_inf(jax.vmap(potential_fn)(position))
    num_walkers = position.shape[0]
    # Every particle chunk is drawn while the flow is being fitted, which measures the
    # acceptance of each count; then only the chosen count (see `count_particles`).
    all_chunks = adapting & still_fitting(state.fit_progress, config.fit_patience)
    num_chunks = jnp.where(all_chunks, state.particle_accept.shape[0], state.particle_chunks)

    if config.global_move == "none":
        global_accept_prob = jnp.zeros(num_walkers, position.dtype)
        global_nonfinite = jnp.zeros(num_walkers, jnp.int32)
        stranded = jnp.zeros(num_walkers, bool)
    else:
        flow = proposal_flow(state, flow_static, config)
        moved, moved_energy, global_info = _global_move(
            key_global, position, potential_energy, flow, potential_fn, config, num_chunks
        )
        # While settling, the walkers keep their places: the move is computed and discarded.
        settled = ~(adapting & (state.round_index < config.settle_rounds))
        position = jnp.where(settled, moved, position)
        potential_energy = jnp.where(settled, moved_energy, potential_energy)
        global_accept_prob = settled * global_info.accept_prob.astype(position.dtype)
        global_nonfinite = settled * global_info.num_nonfinite
        stranded = settled & global_info.stranded
        if config.adapt_num_particles and config.global_move == "isir":
            state = count_particles(
                state, global_info.accept_prob_by_chunks, all_chunks & settled, config
            )

    step_size = jnp.where(adapting, state.step_size, state.step_size_average)
    position, potential_energy, accept_prob, local_nonfinite, flat = _local_moves(
        key_local,
        position,
        potential_energy,
        potential_fn,
        state.preconditioner,
        step_size,
        config.num_local_steps,
    )
    # A zero gradient at every walker is improper flatness only if the potential stays the
    # same far along the coordinate (inside a hard box it is zero too). Only a diagonal
    # preconditioner holds flat coordinates: a dense one needs no probe.
    if not config.dense_preconditioner:
        flat = jax.lax.cond(
            adapting & jnp.any(flat),
            lambda: flat & unbounded_coordinates(potential_fn, position[0], state.preconditioner),
            lambda: flat,
        )
    # Written first and kept out of the branches, which only read it: XLA copied the whole
    # buffer every round when a branch returned it, or when it was read before the write.
    buffer = record_round(state.buffer, state.round_index, position, adapting)
    unbuffered = jax.lax.cond(
        adapting,
        lambda: adapt(
            state._replace(buffer=buffer),
            accept_prob,
            global_accept_prob,
            flat,
            config,
            jnp.any(stranded),
        )._replace(buffer=None),
        lambda: state._replace(buffer=None),
    )
    state = unbuffered._replace(buffer=buffer)

    fit_now = (
        adapting
        & still_fitting(state.fit_progress, config.fit_patience)
        & config.fit_flow
        & (config.global_move != "none")
        & (state.round_index % config.fit_every == 0)
    )
    flow_params, opt_state, flow_loss = jax.lax.cond(
        fit_now,
        lambda: fit_on_buffer(key_fit, state, flow_static, config),
        lambda: (state.flow_params, state.opt_state, jnp.full((), jnp.nan, position.dtype)),
    )
    state = state._replace(
        flow_params=flow_params, opt_state=opt_state, round_index=state.round_index + 1
    )
    info = FlowMCRoundInfo(
        potential_energy=potential_energy,
        accept_prob=accept_prob,
        global_accept_prob=global_accept_prob,
        # int32 whatever `jax_enable_x64` says: the kernel state holds int32 counts.
        num_nonfinite=(global_nonfinite + local_nonfinite).astype(jnp.int32),
        flow_loss=flow_loss,
        step_size=step_size,
        stranded=stranded,
    )
    return position, state, info
