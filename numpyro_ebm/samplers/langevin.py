"""Local Langevin moves on a batch of walkers: MALA and unadjusted Langevin (ULA).

Pure functions over :class:`Walkers`. A potential ``potential_fn`` maps one flat position
``(dim,)`` to a scalar ``U(x) = -log π(x)`` (up to a constant); the moves are vectorised over the
leading walker axis.

The proposal is ``x' = x - ε ∇U(x) + sqrt(2ε) ξ`` with ``ξ ~ N(0, I)``: ``ε`` is the
``step_size`` (the ``η`` of METHOD.md §3's ULA formula). MALA accepts with the Metropolis–Hastings
ratio; ULA always moves. A non-finite potential or gradient at a proposal is a rejected move,
counted in :class:`LocalInfo`, and never enters a walker's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from numpyro_ebm._checks import typed_key

__all__ = [
    "LocalInfo",
    "Walkers",
    "init_walkers",
    "mala_step",
    "nonfinite_to_inf",
    "ula_step",
]

PotentialFn = Callable[[jax.Array], jax.Array]


class Walkers(NamedTuple):
    """A batch of walkers with the potential and its gradient at their positions.

    Attributes:
        position: Shape ``(num_walkers, dim)``.
        potential_energy: ``U`` at each position, shape ``(num_walkers,)``; ``+inf`` where ``U``
            is not finite.
        potential_grad: ``∇U`` at each position, shape ``(num_walkers, dim)``; zero where
            not finite.
    """

    position: jax.Array
    potential_energy: jax.Array
    potential_grad: jax.Array


class LocalInfo(NamedTuple):
    """Diagnostics of one local move, per walker.

    Attributes:
        accept_prob: Metropolis–Hastings acceptance probability (1 for ULA).
        accepted: Whether the walker moved.
        nonfinite: Whether the proposal's potential or gradient was not finite.
    """

    accept_prob: jax.Array
    accepted: jax.Array
    nonfinite: jax.Array


def nonfinite_to_inf(potential_energy: jax.Array) -> jax.Array:
    """``U`` with every non-finite value (NaN, ±inf) replaced by ``+inf``: zero density.

    Example:
        >>> import jax.numpy as jnp
        >>> nonfinite_to_inf(jnp.array([1.0, jnp.nan, -jnp.inf]))
        Array([ 1., inf, inf], dtype=float32)
    """
    return jnp.where(jnp.isfinite(potential_energy), potential_energy, jnp.inf)


def _value_and_grad(potential_fn: PotentialFn, position: jax.Array):
    """Potential and gradient of each walker; non-finite values become ``(+inf, 0)``."""
    energy, grad = jax.vmap(jax.value_and_grad(potential_fn))(position)
    finite = jnp.isfinite(energy) & jnp.all(jnp.isfinite(grad), axis=-1)
    energy = jnp.where(finite, energy, jnp.inf)
    grad = jnp.where(finite[:, None], grad, 0.0)
    return energy, grad, finite


def init_walkers(position: jax.Array, potential_fn: PotentialFn) -> Walkers:
    """Evaluate the potential and its gradient at each walker.

    Args:
        position: Walker positions, shape ``(num_walkers, dim)``.
        potential_fn: ``U`` of one flat position.

    Returns:
        The walkers.

    Example:
        >>> import jax.numpy as jnp
        >>> walkers = init_walkers(jnp.ones((3, 2)), lambda x: 0.5 * x @ x)
        >>> walkers.potential_energy
        Array([1., 1., 1.], dtype=float32)
    """
    energy, grad, _ = _value_and_grad(potential_fn, position)
    return Walkers(position, energy, grad)


def _langevin_proposal(rng_key, walkers: Walkers, step_size) -> jax.Array:
    noise = jax.random.normal(rng_key, walkers.position.shape, walkers.position.dtype)
    drift = walkers.position - step_size * walkers.potential_grad
    return drift + jnp.sqrt(2.0 * step_size) * noise


def _log_proposal_density(to, frm, frm_grad, step_size) -> jax.Array:
    """``log q(to | frm)`` of the Langevin proposal, up to a constant that cancels."""
    residual = to - frm + step_size * frm_grad
    return -jnp.sum(residual**2, axis=-1) / (4.0 * step_size)


def mala_log_accept_ratio(current: Walkers, proposal: Walkers, step_size) -> jax.Array:
    """Log Metropolis–Hastings ratio of a MALA move; ``-inf`` wherever it is not a number.

    Args:
        current: Walkers before the move.
        proposal: Proposed walkers (with potential and gradient).
        step_size: ``ε``.

    Returns:
        ``log α`` per walker.
    """
    log_ratio = (
        current.potential_energy
        - proposal.potential_energy
        + _log_proposal_density(
            current.position, proposal.position, proposal.potential_grad, step_size
        )
        - _log_proposal_density(
            proposal.position, current.position, current.potential_grad, step_size
        )
    )
    return jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)


def _select(accepted: jax.Array, new: Walkers, old: Walkers) -> Walkers:
    def pick(a, b):
        return jnp.where(accepted.reshape(accepted.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


def mala_step(
    rng_key: jax.Array, walkers: Walkers, potential_fn: PotentialFn, step_size: jax.Array
) -> tuple[Walkers, LocalInfo]:
    """One Metropolis-adjusted Langevin step for every walker.

    Args:
        rng_key: PRNG key.
        walkers: Current walkers.
        potential_fn: ``U`` of one flat position.
        step_size: ``ε`` (scalar, shared by the walkers).

    Returns:
        The new walkers and per-walker diagnostics.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> walkers = init_walkers(jnp.zeros((4, 2)), lambda x: 0.5 * x @ x)
        >>> walkers, info = mala_step(jax.random.key(0), walkers, lambda x: 0.5 * x @ x, 0.1)
        >>> info.accept_prob.shape
        (4,)
    """
    key_proposal, key_accept = jax.random.split(typed_key(rng_key))
    position = _langevin_proposal(key_proposal, walkers, step_size)
    energy, grad, finite = _value_and_grad(potential_fn, position)
    proposal = Walkers(position, energy, grad)
    log_ratio = mala_log_accept_ratio(walkers, proposal, step_size)
    log_uniform = jnp.log(jax.random.uniform(key_accept, log_ratio.shape))
    accepted = finite & (log_uniform < log_ratio)
    accept_prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
    return _select(accepted, proposal, walkers), LocalInfo(accept_prob, accepted, ~finite)


def ula_step(
    rng_key: jax.Array, walkers: Walkers, potential_fn: PotentialFn, step_size: jax.Array
) -> tuple[Walkers, LocalInfo]:
    """One unadjusted Langevin step for every walker (the ULA-EBM baseline of [A]).

    A proposal with a non-finite potential or gradient is still refused, so the chain never
    holds a non-finite state.

    Args:
        rng_key: PRNG key.
        walkers: Current walkers.
        potential_fn: ``U`` of one flat position.
        step_size: ``ε`` (scalar).

    Returns:
        The new walkers and per-walker diagnostics (``accept_prob`` is 1 where finite).
    """
    position = _langevin_proposal(typed_key(rng_key), walkers, step_size)
    energy, grad, finite = _value_and_grad(potential_fn, position)
    moved = _select(finite, Walkers(position, energy, grad), walkers)
    accept_prob = finite.astype(position.dtype)
    return moved, LocalInfo(accept_prob, finite, ~finite)
