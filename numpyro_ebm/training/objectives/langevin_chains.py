"""Short Langevin chains on the current tilted model, shared by ``cd``, ``short-run``, ``coopflow``.

The non-persistent objectives all make their negatives the same way: start points (the data
batch for CD [B], draws from ρ for short-run MCMC [C], a flow's draws for CoopFlow [D]), then
``k`` ULA or MALA steps on the tilted potential ``U(x) = E_θ(x) - log ρ(x)`` of the *current*
energy (METHOD.md §1). :func:`langevin_chains` is that move; :func:`draw_base` draws from ρ.

References:
    [B] G. E. Hinton, *Training Products of Experts by Minimizing Contrastive Divergence*,
    Neural Computation 14 (2002).
    [C] E. Nijkamp, M. Hill, S.-C. Zhu, Y. N. Wu, *Learning Non-Convergent Non-Persistent
    Short-Run MCMC Toward Energy-Based Model*, NeurIPS (2019).
    [D] J. Xie, Y. Zhu, J. Li, P. Li, S.-C. Zhu, *A Tale of Two Flows: Cooperative Learning of
    Langevin Flow and Normalizing Flow Toward Energy-Based Model*, ICLR (2022).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from numpyro_ebm._checks import positive_float, positive_int
from numpyro_ebm.energies import TiltedEnergy
from numpyro_ebm.samplers.langevin import init_walkers, mala_step, ula_step
from numpyro_ebm.training.objectives.base import check_non_negative

__all__ = ["LANGEVIN_SAMPLERS", "check_chain_settings", "draw_base", "langevin_chains"]

#: Local moves :func:`langevin_chains` can run.
LANGEVIN_SAMPLERS = ("ula", "mala")
_MOVES = {"ula": ula_step, "mala": mala_step}


def check_chain_settings(sampler: str, num_steps: Any, step_size: Any, l2_penalty: Any) -> None:
    """Validate the settings every Langevin-chain objective has, naming the bad one.

    Args:
        sampler: One of :data:`LANGEVIN_SAMPLERS`.
        num_steps: Langevin steps per EBM step, an integer ``>= 1``.
        step_size: Langevin step ``η``, a positive number.
        l2_penalty: Weight of the energy-magnitude penalty, a number ``>= 0``.

    Raises:
        ValueError: For a setting out of its range.

    Example:
        >>> check_chain_settings("ula", 0, 0.01, 0.0)
        Traceback (most recent call last):
        ...
        ValueError: `num_steps` must be an integer >= 1, got 0.
    """
    if sampler not in LANGEVIN_SAMPLERS:
        raise ValueError(f"expected `sampler` in {LANGEVIN_SAMPLERS}, got {sampler!r}")
    positive_int("num_steps", num_steps)
    positive_float("step_size", step_size)
    check_non_negative("l2_penalty", l2_penalty)


def draw_base(rng_key: jax.Array, num: int, dim: int, base_scale: float) -> jax.Array:
    """``num`` independent draws from the tilt ρ = N(0, σ² I).

    Args:
        rng_key: PRNG key.
        num: Number of points.
        dim: Dimension of a point.
        base_scale: σ.

    Returns:
        The draws, ``(num, dim)``.

    Example:
        >>> import jax
        >>> draw_base(jax.random.key(0), 3, 2, 10.0).shape
        (3, 2)
    """
    return base_scale * jax.random.normal(rng_key, (num, dim))


def langevin_chains(
    rng_key: jax.Array,
    position: jax.Array,
    energy_params: Any,
    energy_static: Any,
    base_scale: float,
    *,
    num_steps: int,
    step_size: float,
    sampler: str = "ula",
) -> tuple[jax.Array, jax.Array]:
    """Run ``num_steps`` ULA or MALA steps from ``position`` on the current tilted model.

    The potential is ``U = E_θ - log ρ`` with ``E_θ = eqx.combine(energy_params,
    energy_static)``; each step proposes ``x - η ∇U(x) + sqrt(2η) ξ`` (:mod:`~numpyro_ebm.
    samplers.langevin`), which MALA accepts with the Metropolis-Hastings ratio and ULA always
    takes (except a proposal whose potential is not finite, which is refused). Only the last
    state is returned: it is the negatives of CD-k [B], short-run MCMC [C] and CoopFlow [D].

    Args:
        rng_key: PRNG key.
        position: Start points ``(n, d)``.
        energy_params: Array part of the energy.
        energy_static: The rest of the energy.
        base_scale: σ of the tilt ρ.
        num_steps: Steps ``k`` (a Python int).
        step_size: ``η``.
        sampler: ``"ula"`` or ``"mala"``.

    Returns:
        ``(position, accept_prob)``: the end points ``(n, d)`` and the acceptance probability
        averaged over walkers and steps (1 for ULA while every proposal is finite).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> energy = lambda x: 0.5 * x @ x  # no arrays: energy_params is None
        >>> end, accept_prob = langevin_chains(jax.random.key(0), jnp.zeros((4, 2)), None,
        ...     energy, 10.0, num_steps=3, step_size=0.1)
        >>> end.shape, float(accept_prob)
        ((4, 2), 1.0)
    """
    move = _MOVES[sampler]
    potential_fn = TiltedEnergy.from_parts(energy_params, energy_static, base_scale)

    def one_step(walkers, key):
        walkers, info = move(key, walkers, potential_fn, step_size)
        return walkers, jnp.mean(info.accept_prob)

    walkers, accept_prob = jax.lax.scan(
        one_step, init_walkers(position, potential_fn), jax.random.split(rng_key, num_steps)
    )
    return walkers.position, jnp.mean(accept_prob)
