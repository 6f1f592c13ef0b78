"""The flow-assisted MCMC round of flowMC ([A] Alg. 5), as pure functions over flat walkers.

A round is one global move with the flow (i-SIR or independent MH), then ``num_local_steps``
MALA steps. While ``adapting`` is true (warm-up, or inside EBM training), the round also

1. moves the MALA step size toward ``target_accept_prob`` (Robbins–Monro on its logarithm), and
2. every ``fit_every`` rounds, fits the flow by maximum likelihood on a buffer of the walkers'
   recent positions.

Outside adaptation the flow and step size are frozen, so the rounds form a fixed Markov kernel
that leaves the target invariant.

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

from numpyro_ebm.flows import fit_flow, merge_flow
from numpyro_ebm.samplers.global_moves import imh_step, isir_step
from numpyro_ebm.samplers.langevin import Walkers, init_walkers, mala_step

__all__ = [
    "FlowMCConfig",
    "FlowMCRoundInfo",
    "FlowMCWalkerState",
    "adapt_step_size",
    "flowmc_round",
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


class FlowMCWalkerState(NamedTuple):
    """What a round needs from the previous one (flat coordinates).

    Attributes:
        position: Walker positions, ``(num_walkers, dim)``.
        step_size: MALA step size (scalar).
        flow_params: Trainable arrays of the flow.
        opt_state: The flow optimizer's state.
        buffer: The walkers' positions at the last rounds, ``(buffer_size, num_walkers, dim)``,
            used to fit the flow.
        round_index: Rounds done so far (also the buffer's write cursor).
    """

    position: jax.Array
    step_size: jax.Array
    flow_params: Any
    opt_state: Any
    buffer: jax.Array
    round_index: jax.Array


class FlowMCRoundInfo(NamedTuple):
    """Per-walker diagnostics of a round.

    Attributes:
        potential_energy: ``U`` at the new positions.
        accept_prob: Mean MALA acceptance probability over the round's local steps.
        global_accept_prob: Acceptance probability of the global move (0 without one).
        num_nonfinite: Proposals of the round (global and local) whose potential was not finite.
        flow_loss: Loss of the last flow fit (NaN when the flow was not fitted this round);
            a scalar, not per walker.
    """

    potential_energy: jax.Array
    accept_prob: jax.Array
    global_accept_prob: jax.Array
    num_nonfinite: jax.Array
    flow_loss: jax.Array


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


def _global_move(rng_key, walkers: Walkers, flow, potential_fn, config: FlowMCConfig):
    if config.global_move == "isir":
        return isir_step(
            rng_key,
            walkers.position,
            walkers.potential_energy,
            flow,
            potential_fn,
            num_particles=config.num_particles,
            chunk_size=config.chunk_size,
        )
    return imh_step(rng_key, walkers.position, walkers.potential_energy, flow, potential_fn)


def _local_moves(rng_key, walkers: Walkers, potential_fn, step_size, num_steps: int):
    if num_steps == 0:  # global moves only: nothing to average, nothing to adapt
        num_walkers = walkers.position.shape[0]
        return walkers, jnp.zeros(num_walkers, walkers.position.dtype), jnp.zeros(num_walkers, int)

    def one_step(walkers, key):
        walkers, info = mala_step(key, walkers, potential_fn, step_size)
        return walkers, (info.accept_prob, info.nonfinite)

    walkers, (accept_prob, nonfinite) = jax.lax.scan(
        one_step, walkers, jax.random.split(rng_key, num_steps)
    )
    return walkers, jnp.mean(accept_prob, axis=0), jnp.sum(nonfinite, axis=0)


def _fit_on_buffer(rng_key, state: FlowMCWalkerState, flow_static, config: FlowMCConfig):
    """Fit the flow on the filled part of the buffer (rows not yet written are masked)."""
    buffer_size, _, dim = state.buffer.shape
    filled = jnp.arange(buffer_size) <= state.round_index
    points = jnp.where(filled[:, None, None], state.buffer, jnp.nan).reshape(-1, dim)
    params, opt_state, loss = fit_flow(
        rng_key,
        state.flow_params,
        state.opt_state,
        flow_static,
        points,
        optimizer=config.optimizer,
        num_steps=config.num_fit_steps,
        batch_size=config.fit_batch_size,
    )
    return params, opt_state, loss.astype(state.position.dtype)


def flowmc_round(
    rng_key: jax.Array,
    state: FlowMCWalkerState,
    potential_fn: PotentialFn,
    flow_static: Any,
    config: FlowMCConfig,
    adapting: jax.Array,
) -> tuple[FlowMCWalkerState, FlowMCRoundInfo]:
    """One flowMC round: a global flow move, local MALA moves, and adaptation if ``adapting``.

    The potential and its gradient are evaluated afresh at the start of the round, so the
    target may change between rounds (as it does during EBM training).

    Args:
        rng_key: PRNG key.
        state: State after the previous round.
        potential_fn: ``U`` of one flat position.
        flow_static: The non-trainable part of the flow (see :func:`numpyro_ebm.flows.split_flow`).
        config: Hyperparameters.
        adapting: Boolean scalar: adapt the step size and fit the flow this round.

    Returns:
        The new state and the round's diagnostics.
    """
    key_global, key_local, key_fit = jax.random.split(rng_key, 3)
    walkers = init_walkers(state.position, potential_fn)
    num_walkers = walkers.position.shape[0]

    if config.global_move == "none":
        global_accept_prob = jnp.zeros(num_walkers, walkers.position.dtype)
        global_nonfinite = jnp.zeros(num_walkers, jnp.int32)
    else:
        flow = merge_flow(state.flow_params, flow_static)
        position, _, global_info = _global_move(key_global, walkers, flow, potential_fn, config)
        walkers = init_walkers(position, potential_fn)
        global_accept_prob = global_info.accept_prob.astype(walkers.position.dtype)
        global_nonfinite = global_info.num_nonfinite

    walkers, accept_prob, local_nonfinite = _local_moves(
        key_local, walkers, potential_fn, state.step_size, config.num_local_steps
    )

    step_size = jnp.where(
        adapting & (config.num_local_steps > 0),
        adapt_step_size(
            state.step_size, jnp.mean(accept_prob), config.target_accept_prob, state.round_index
        ),
        state.step_size,
    )
    buffer = state.buffer.at[state.round_index % state.buffer.shape[0]].set(walkers.position)
    state = state._replace(position=walkers.position, step_size=step_size, buffer=buffer)

    fit_now = (
        adapting
        & config.fit_flow
        & (config.global_move != "none")
        & (state.round_index % config.fit_every == 0)
    )
    flow_params, opt_state, flow_loss = jax.lax.cond(
        fit_now,
        lambda: _fit_on_buffer(key_fit, state, flow_static, config),
        lambda: (state.flow_params, state.opt_state, jnp.full((), jnp.nan, state.position.dtype)),
    )
    state = state._replace(
        flow_params=flow_params, opt_state=opt_state, round_index=state.round_index + 1
    )
    info = FlowMCRoundInfo(
        potential_energy=walkers.potential_energy,
        accept_prob=accept_prob,
        global_accept_prob=global_accept_prob,
        # int32 whatever `jax_enable_x64` says: the kernel state holds int32 counts.
        num_nonfinite=(global_nonfinite + local_nonfinite).astype(jnp.int32),
        flow_loss=flow_loss,
    )
    return state, info
