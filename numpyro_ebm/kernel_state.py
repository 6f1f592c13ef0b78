"""The state of :class:`~numpyro_ebm.FlowMCKernel`, shaped for NumPyro's ``MCMC`` collection.

``MCMC(..., chain_method="vectorized")`` collects a state field by stacking it over iterations
and then swapping the first two axes, so every field a user may name in ``extra_fields`` must
have the walker axis first. Per-iteration scalars (``i``, ``step_size``, running acceptance
means) are therefore kept once per walker, and the PRNG key is kept as one key per walker.
What only the sampler needs (flow, optimizer, preconditioner, buffer) sits in the single field
``adaptation``, which ``MCMC`` cannot collect.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.util

from numpyro_ebm._checks import typed_key
from numpyro_ebm._pickling import reduce_keeping_layout
from numpyro_ebm.samplers.flowmc import FlowMCRoundInfo
from numpyro_ebm.samplers.warmup import FlowMCAdaptation

__all__ = [
    "COLLECTABLE_FIELDS",
    "DEFAULT_FIELDS",
    "FlowMCState",
    "initial_state",
    "next_state",
    "per_walker_keys",
]


class _FlowMCFields(NamedTuple):
    i: jax.Array
    z: Any
    potential_energy: jax.Array
    accept_prob: jax.Array
    global_accept_prob: jax.Array
    num_nonfinite: jax.Array
    flow_loss: jax.Array
    step_size: jax.Array
    mean_accept_prob: jax.Array
    mean_global_accept_prob: jax.Array
    stranded: jax.Array
    adaptation: FlowMCAdaptation
    rng_key: jax.Array


#: Fields ``MCMC.run`` collects without being asked (ArviZ shows them in ``sample_stats``).
DEFAULT_FIELDS = (
    "z",
    "potential_energy",
    "accept_prob",
    "global_accept_prob",
    "num_nonfinite",
    "stranded",
)
#: Fields with the walker axis first, which ``MCMC.run(extra_fields=...)`` can collect.
COLLECTABLE_FIELDS = tuple(name for name in _FlowMCFields._fields if name != "adaptation")
_ADAPTATION_INDEX = _FlowMCFields._fields.index("adaptation")
# The functions through which NumPyro's `MCMC` reads the fields named in `extra_fields`.
_NUMPYRO_FIELD_READERS = frozenset(
    reader.__code__
    for reader in (getattr(numpyro.util, "_get_nested_attr", None),)
    if reader is not None
)


def _not_collectable(name: str) -> ValueError:
    return ValueError(
        "expected MCMC.run(extra_fields=...) to name fields of FlowMCKernel's state ("
        f"{', '.join(COLLECTABLE_FIELDS)}), got {name!r}. NUTS's diverging, num_steps, "
        "energy and adapt_state have no counterpart: numpyro_ebm.health.check_run(mcmc) "
        "reports stalled local moves, the global acceptance and R̂; the sampler's own state is "
        "mcmc.last_state.adaptation."
    )


def per_walker_keys(rng_key: jax.Array, num_walkers: int) -> jax.Array:
    """``num_walkers`` raw ``uint32`` keys from one key or a batch of keys, typed or raw.

    The state keeps raw key data: NumPyro's collection of ``extra_fields`` cannot stack typed
    keys. A batch of ``num_walkers`` raw keys is returned as it is.

    Args:
        rng_key: One key or a batch of keys (walker axis first), typed or raw.
        num_walkers: Number of walkers.

    Returns:
        Raw keys of shape ``(num_walkers, *key_shape)``.

    Example:
        >>> import jax
        >>> per_walker_keys(jax.random.key(0), 3).shape
        (3, 2)
    """
    rng_key = jnp.asarray(rng_key)
    if not jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        if rng_key.ndim == 2 and rng_key.shape[0] == num_walkers:
            return rng_key
        rng_key = typed_key(rng_key if rng_key.ndim == 1 else rng_key[0])
    elif rng_key.ndim:
        rng_key = rng_key[0]
    return jax.random.key_data(jax.random.split(rng_key, num_walkers))


class FlowMCState(_FlowMCFields):
    """State of :class:`~numpyro_ebm.FlowMCKernel`; every field but ``adaptation`` is per walker.

    Attributes:
        i: Iterations done (warm-up included), repeated per walker.
        z: Unconstrained positions of the walkers (a pytree like the model's latent sites).
        potential_energy: ``U(z)`` per walker.
        accept_prob: Mean MALA acceptance probability of the last iteration, per walker.
        global_accept_prob: Acceptance probability of the last global move, per walker.
        num_nonfinite: Proposals of the last iteration with a non-finite potential (rejected).
        flow_loss: Loss of the last flow fit, repeated per walker (NaN if none this iteration).
        step_size: MALA step size used in the last iteration (in preconditioned coordinates),
            repeated per walker.
        mean_accept_prob: Running mean of ``accept_prob`` in the current phase (warm-up or
            sampling), repeated per walker.
        mean_global_accept_prob: Running mean of ``global_accept_prob``, repeated per walker.
        stranded: Whether the walker was stranded at the last global move: it sat where the
            flow has almost no mass, so global moves could neither move it nor bring others
            there (see :func:`~numpyro_ebm.samplers.global_moves.stranded_walkers`).
        rng_key: One raw ``uint32`` PRNG key per walker (``MCMC.run`` may be given either
            kind of key; NumPyro can only collect raw ones).
    """

    __slots__ = ()

    def __getitem__(self, index):
        # NumPyro collects `extra_fields` by attribute, then by item: an unknown name (often
        # one of NUTS's) reaches here, before any iteration runs.
        if isinstance(index, str):
            raise _not_collectable(index)
        return super().__getitem__(index)

    @property
    def adaptation(self) -> FlowMCAdaptation:
        """The sampler's own state, one per run (not collectable).

        Flow parameters, optimizer state, preconditioner, step-size adaptation and the buffer
        the flow is fitted on (see :class:`~numpyro_ebm.samplers.FlowMCAdaptation`).
        """
        # One per run, not per walker: collected per iteration it would hold the whole buffer
        # each time, and NumPyro's swap of the walker and iteration axes fails only after the
        # run, losing its draws. Refused when NumPyro reads it, before the first iteration.
        if sys._getframe(1).f_code in _NUMPYRO_FIELD_READERS:
            raise _not_collectable("adaptation")
        return tuple.__getitem__(self, _ADAPTATION_INDEX)

    def __reduce__(self):
        # Walkers split over a mesh stay split after unpickling (they came back on one device).
        return reduce_keeping_layout(self)

    def _replace(self, **changes) -> FlowMCState:
        # `MCMC` continues a run with `state._replace(rng_key=key)` and one key; keep one key
        # per walker so the field stays collectable and the loop's carry keeps its shape.
        if "rng_key" in changes:
            changes["rng_key"] = self._continued_keys(changes["rng_key"])
        return super()._replace(**changes)

    def _continued_keys(self, rng_key: Any) -> jax.Array:
        """The walkers' keys of a run continued with ``rng_key``.

        NumPyro's idiom ``mcmc.run(mcmc.last_state.rng_key)`` hands an ensemble kernel the
        first walker's key: the walkers then keep their own keys, so the continuation draws
        what one longer run would, as NUTS's does. Any other key starts a new stream.
        """
        own = self.rng_key
        given = jnp.asarray(rng_key)
        if jax.dtypes.issubdtype(given.dtype, jax.dtypes.prng_key):
            given = jax.random.key_data(given)
        concrete = not any(isinstance(key, jax.core.Tracer) for key in (given, own))
        if concrete and given.shape == own.shape[1:] and bool(jnp.all(given == own[0])):
            return own
        return per_walker_keys(rng_key, self.potential_energy.shape[0])


def initial_state(
    z: Any, potential_energy: jax.Array, adaptation: FlowMCAdaptation, rng_key: jax.Array
) -> FlowMCState:
    """The state before the first iteration.

    Args:
        z: Initial unconstrained positions, walker axis first.
        potential_energy: ``U`` at each walker.
        adaptation: The sampler's initial adaptation state.
        rng_key: One key, typed or raw.

    Returns:
        The state, with zero acceptances and the initial step size per walker.
    """
    num_walkers = potential_energy.shape[0]
    dtype = potential_energy.dtype
    zeros = jnp.zeros(num_walkers, dtype)
    return FlowMCState(
        i=jnp.zeros(num_walkers, jnp.int32),
        z=z,
        potential_energy=potential_energy,
        accept_prob=zeros,
        global_accept_prob=zeros,
        num_nonfinite=jnp.zeros(num_walkers, jnp.int32),
        flow_loss=jnp.full(num_walkers, jnp.nan, dtype),
        step_size=jnp.broadcast_to(adaptation.step_size, (num_walkers,)),
        mean_accept_prob=zeros,
        mean_global_accept_prob=zeros,
        stranded=jnp.zeros(num_walkers, bool),
        adaptation=adaptation,
        rng_key=per_walker_keys(rng_key, num_walkers),
    )


def next_state(
    state: FlowMCState,
    z: Any,
    adaptation: FlowMCAdaptation,
    info: FlowMCRoundInfo,
    phase_start: jax.Array,
    rng_key: jax.Array,
) -> FlowMCState:
    """The state after one round, with the round's diagnostics spread over the walkers.

    Args:
        state: The state before the round.
        z: The walkers' new positions.
        adaptation: The adaptation state after the round.
        info: The round's diagnostics.
        phase_start: Iteration at which the current phase (warm-up or sampling) began; the
            running acceptance means average over the phase.
        rng_key: The next key, typed or raw.

    Returns:
        The new state.
    """
    num_walkers = info.accept_prob.shape[0]
    iteration = adaptation.round_index  # rounds done, this one included
    count = iteration - phase_start

    def running_mean(mean, value):
        return mean + (jnp.mean(value) - mean) / count

    def per_walker(value):
        return jnp.broadcast_to(value, (num_walkers,))

    return FlowMCState(
        i=per_walker(iteration),
        z=z,
        potential_energy=info.potential_energy,
        accept_prob=info.accept_prob,
        global_accept_prob=info.global_accept_prob,
        num_nonfinite=info.num_nonfinite,
        flow_loss=per_walker(info.flow_loss),
        step_size=per_walker(info.step_size),
        mean_accept_prob=running_mean(state.mean_accept_prob, info.accept_prob),
        mean_global_accept_prob=running_mean(
            state.mean_global_accept_prob, info.global_accept_prob
        ),
        stranded=info.stranded,
        adaptation=adaptation,
        rng_key=per_walker_keys(rng_key, num_walkers),
    )
