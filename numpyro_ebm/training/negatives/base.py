"""The negative samplers' interface: :class:`NegativeSampler` and :class:`NegativeInfo`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flowjax.distributions import AbstractDistribution

__all__ = ["NegativeInfo", "NegativeSampler", "check_positions"]


class NegativeInfo(NamedTuple):
    """Diagnostics of one EBM step's negative sampling (scalars, means over walkers).

    A sampler without global moves or without a flow gives ``None`` for what it does not
    measure, and the training history then has no such entry (rather than a 0 or a NaN that
    reads as a failing flow).

    Attributes:
        accept_prob: Mean local (MALA) acceptance probability; 1 for ULA where finite.
        global_accept_prob: Mean acceptance of the flow's global move; ``None`` without one.
        flow_loss: Loss of the last flow fit; ``None`` without a flow.
        stranded_fraction: Fraction of walkers stranded where the flow has almost no mass
            (see :func:`~numpyro_ebm.samplers.global_moves.stranded_walkers`): the model has
            mass there that global moves cannot weigh. ``None`` without global moves.
    """

    accept_prob: jax.Array
    global_accept_prob: jax.Array | None = None
    flow_loss: jax.Array | None = None
    stranded_fraction: jax.Array | None = None

    def metrics(self) -> dict[str, jax.Array]:
        """The diagnostics this sampler measures, by name (``None`` fields left out).

        Example:
            >>> import jax.numpy as jnp
            >>> NegativeInfo(jnp.float32(0.9)).metrics()
            {'accept_prob': Array(0.9, dtype=float32)}
        """
        return {name: value for name, value in self._asdict().items() if value is not None}


class NegativeSampler(NamedTuple):
    """A negative sampler: pure ``init``/``step`` over a state, and accessors.

    Attributes:
        name: One of :data:`NEGATIVE_SAMPLERS`.
        init: ``init(rng_key, positions, energy_params) -> state``; outside ``jit``.
        step: ``step(state, energy_params) -> (state, NegativeInfo)``; jittable.
        positions: ``positions(state) -> (num_walkers, dim)`` array of negatives.
        get_flow: ``get_flow(state)``: the sampler's flow, or ``None`` if it has none.
    """

    name: str
    init: Callable[[jax.Array, jax.Array, Any], Any]
    step: Callable[[Any, Any], tuple[Any, NegativeInfo]]
    positions: Callable[[Any], jax.Array]
    get_flow: Callable[[Any], AbstractDistribution | None]


def check_positions(positions: jax.Array, dim: int) -> jax.Array:
    """Initial walkers as an array of shape ``(num_walkers, dim)``, ``num_walkers >= 2``.

    Args:
        positions: The walkers' initial positions.
        dim: Dimension of a point.

    Returns:
        The positions as an array.

    Raises:
        ValueError: If the shape is not ``(num_walkers, dim)`` with ``num_walkers >= 2``.
    """
    positions = jnp.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != dim or positions.shape[0] < 2:
        raise ValueError(
            f"expected initial walker positions of shape (num_walkers, {dim}) with "
            f"num_walkers >= 2, got shape {positions.shape}"
        )
    return positions
