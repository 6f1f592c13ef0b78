"""``ula`` negatives: persistent unadjusted Langevin, [A]'s ULA-EBM baseline.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from numpyro_ebm._checks import positive_float, positive_int, typed_key
from numpyro_ebm.energies import TiltedEnergy
from numpyro_ebm.samplers.langevin import Walkers, init_walkers, ula_step
from numpyro_ebm.training.negatives.base import NegativeInfo, NegativeSampler, check_positions

__all__ = ["ULA_STEP_SIZE", "ULAState", "ula_sampler"]

#: ULA step of [A]'s ULA-EBM baseline (METHOD.md §3): η = (0.125)² / 2.
ULA_STEP_SIZE = 0.125**2 / 2


class ULAState(NamedTuple):
    """State of the ULA sampler.

    Attributes:
        walkers: Walker positions with potential and gradient (at the last energy seen).
        rng_key: PRNG key.
    """

    walkers: Walkers
    rng_key: jax.Array


def ula_sampler(
    energy: Callable,
    dim: int,
    base_scale: float,
    *,
    num_steps: int = 10,
    step_size: float = ULA_STEP_SIZE,
) -> NegativeSampler:
    """Persistent unadjusted Langevin negatives: the ULA-EBM baseline of [A].

    Each EBM step runs ``num_steps`` ULA steps ``x ← x - η ∇U(x) + sqrt(2η) ξ`` on the current
    tilted potential; only the last state is a negative, as in [A].

    Args:
        energy: The energy module (its static part is kept).
        dim: Dimension of a point.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        num_steps: ULA steps per EBM step.
        step_size: ``η``; [A] uses ``(0.125)² / 2``.

    Returns:
        The sampler.

    Example:
        >>> import jax, equinox as eqx
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
        >>> params = eqx.filter(energy, eqx.is_array)
        >>> sampler = ula_sampler(energy, 2, 1.0, num_steps=2)
        >>> state = sampler.init(jax.random.key(1), jax.numpy.zeros((8, 2)), params)
        >>> state, info = sampler.step(state, params)
        >>> float(info.accept_prob)
        1.0
    """
    num_steps = positive_int("num_steps", num_steps)
    step_size = positive_float("step_size", step_size)
    base_scale = positive_float("base_scale", base_scale)
    _, energy_static = eqx.partition(energy, eqx.is_inexact_array)

    def init(rng_key, positions, energy_params):
        positions = check_positions(positions, dim)
        potential_fn = TiltedEnergy.from_parts(energy_params, energy_static, base_scale)
        return ULAState(init_walkers(positions, potential_fn), typed_key(rng_key))

    def step(state, energy_params):
        potential_fn = TiltedEnergy.from_parts(energy_params, energy_static, base_scale)
        rng_key, key_steps = jax.random.split(state.rng_key)
        # The energy changed since the last step: re-evaluate the potential and its gradient.
        walkers = init_walkers(state.walkers.position, potential_fn)

        def one_step(walkers, key):
            walkers, info = ula_step(key, walkers, potential_fn, step_size)
            return walkers, info.accept_prob

        walkers, accept_prob = jax.lax.scan(
            one_step, walkers, jax.random.split(key_steps, num_steps)
        )
        return ULAState(walkers, rng_key), NegativeInfo(jnp.mean(accept_prob))

    def positions(state):
        return state.walkers.position

    return NegativeSampler("ula", init, step, positions, lambda state: None)
