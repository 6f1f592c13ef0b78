"""Negative samplers: persistent walkers that follow the current EBM during training.

Every sampler has the same small interface, a :class:`NegativeSampler` of three pure functions
and one accessor:

- ``init(rng_key, positions, energy_params) -> state``: start the walkers at ``positions``
  (shape ``(num_walkers, dim)``), called once outside ``jit``;
- ``step(state, energy_params) -> (state, info)``: move the walkers toward the tilted model
  ``p ∝ exp(-E_θ) ρ`` of the *current* energy parameters (METHOD.md §1), jittable;
- ``positions(state)``: the current walker positions, the negatives ``x⁻``;
- ``get_flow(state)``: the flow the sampler carries, or ``None``.

The four samplers are those of [A]:

- ``flowmc`` ([A] Alg. 1 and 5): :class:`~numpyro_ebm.FlowMCKernel` over
  :func:`~numpyro_ebm.energies.ebm_model`, i-SIR (or independent MH) with the flow, then MALA;
  the kernel's adaptation never stops, so it fits its flow on the negatives at every EBM step.
- ``mala``: the same kernel with ``global_move="none"``.
- ``ula`` (ULA-EBM): unadjusted Langevin with [A]'s step ``(0.125)²/2``.
- ``nt`` (NT-EBM): MALA in the latent space of the flow, the flow fitted on the negatives.

``flowmc`` and ``mala`` do not copy the sampler: they call the very ``init`` and ``sample``
of :class:`~numpyro_ebm.FlowMCKernel`, with the EBM's parameters as the model's argument.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numpyro_ebm.training.negatives.base import NegativeInfo, NegativeSampler, check_positions
from numpyro_ebm.training.negatives.kernel_samplers import flowmc_sampler, mala_sampler
from numpyro_ebm.training.negatives.neural_transport import (
    NT_TARGET_ACCEPT_PROB,
    NTState,
    nt_sampler,
)
from numpyro_ebm.training.negatives.ula import ULA_STEP_SIZE, ULAState, ula_sampler

__all__ = [
    "NEGATIVE_SAMPLERS",
    "NT_TARGET_ACCEPT_PROB",
    "ULA_STEP_SIZE",
    "NegativeInfo",
    "NegativeSampler",
    "NTState",
    "ULAState",
    "check_positions",
    "flowmc_sampler",
    "make_negative_sampler",
    "mala_sampler",
    "nt_sampler",
    "ula_sampler",
]

#: Names accepted by :func:`make_negative_sampler`.
NEGATIVE_SAMPLERS = ("flowmc", "ula", "mala", "nt")


def make_negative_sampler(
    name: str, energy: Callable, dim: int, base_scale: float, **options: Any
) -> NegativeSampler:
    """Build a negative sampler by name.

    Args:
        name: One of :data:`NEGATIVE_SAMPLERS`: ``"flowmc"``, ``"ula"``, ``"mala"``, ``"nt"``.
        energy: The energy module.
        dim: Dimension of a point.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        **options: Keyword arguments of :func:`flowmc_sampler`, :func:`ula_sampler`,
            :func:`mala_sampler` or :func:`nt_sampler`.

    Returns:
        The sampler.

    Raises:
        ValueError: For an unknown name.

    Example:
        >>> import jax
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
        >>> make_negative_sampler("ula", energy, 2, 1.0).name
        'ula'
    """
    builders = {
        "flowmc": flowmc_sampler,
        "ula": ula_sampler,
        "mala": mala_sampler,
        "nt": nt_sampler,
    }
    if name not in builders:
        raise ValueError(f"expected a sampler in {NEGATIVE_SAMPLERS}, got {name!r}")
    return builders[name](energy, dim, base_scale, **options)
