"""Does the potential rise far from the walkers? The check that catches a wrong-sign potential.

flowMC's and emcee's users pass the log density ``log p``; ``FlowMCKernel(potential_fn=...)``
takes ``U = -log p``, as NumPyro's kernels do. Given ``log p``, the walkers run off to infinity
and the run ends, after all its iterations, with the step size at 0 and the global acceptance at 0.
The kernel probes the potential once, with its initial state: at the walkers' mean ``c`` and at
``c ± r`` for a few directions ``r`` a thousand walker spreads long. A normalisable target
rises far away, so ``U(c + r) + U(c - r) > 2 U(c)`` along some direction (along every one for a
convex ``U``, and so for every Gaussian-tailed target far enough out); a potential that falls
along every probe is no density, and the kernel refuses it before any iteration. A flat
potential (an improper coordinate, as ``obs_mask`` leaves) neither rises nor falls and passes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "NUM_PROBE_DIRECTIONS",
    "PROBE_REACH",
    "check_potential_rises",
    "energy_with_probes",
    "probe_points",
]

#: Directions probed: each costs two potential evaluations, in the initial state's program.
NUM_PROBE_DIRECTIONS = 4
#: How far the probes are, in walker spreads along each coordinate (times a unit Gaussian).
PROBE_REACH = 1e3


def probe_points(position: jax.Array) -> jax.Array:
    """The walkers' mean, then ``NUM_PROBE_DIRECTIONS`` points on each side of it, far out.

    Args:
        position: The walkers, ``(num_walkers, dim)``.

    Returns:
        ``(1 + 2 k, dim)``: ``c``, ``c + r_1 … c + r_k``, ``c - r_1 … c - r_k``, with ``r_i`` a
        fixed Gaussian direction scaled by ``PROBE_REACH`` times the walkers' spread (1 where
        they do not spread, as when ``init_to_value`` starts them at one point).

    Example:
        >>> import jax.numpy as jnp
        >>> probe_points(jnp.array([[0.0, 1.0], [2.0, 1.0]])).shape
        (9, 2)
    """
    centre = jnp.mean(position, axis=0)
    spread = jnp.std(position, axis=0)
    spread = jnp.where(spread > 0, spread, 1.0)
    directions = jax.random.normal(
        jax.random.key(0), (NUM_PROBE_DIRECTIONS, position.shape[1]), position.dtype
    )
    reach = PROBE_REACH * spread * directions
    return jnp.concatenate([centre[None], centre + reach, centre - reach])


def energy_with_probes(potential_fn, position: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``U`` of each walker and of :func:`probe_points`, in the caller's program.

    Two vmapped calls, not one over both, so that the walkers' potentials are computed by the
    same operation as without the probes.

    Example:
        >>> import jax.numpy as jnp
        >>> walkers, probes = energy_with_probes(lambda x: x @ x, jnp.ones((3, 2)))
        >>> walkers.tolist(), probes.shape
        ([2.0, 2.0, 2.0], (9,))
    """
    return jax.vmap(potential_fn)(position), jax.vmap(potential_fn)(probe_points(position))


def falls_everywhere(probe_energy: Any) -> bool:
    """Whether ``U`` falls along every probe: ``U(c + r) + U(c - r) < 2 U(c)`` for each ``r``.

    Args:
        probe_energy: ``U`` at :func:`probe_points`, ``(1 + 2 k,)``.

    Returns:
        False if ``U(c)`` is not finite, or if any pair rises, stays level (to a relative
        1e-6) or is not a number.

    Example:
        >>> import numpy as np
        >>> falls_everywhere(np.array([0.0, -5.0, -1e6, -3.0, 2.0]))  # pairs sum to -3, -1e6
        True
        >>> falls_everywhere(np.array([0.0, -5.0, 1e6, 6.0, 2.0]))  # the first pair rises
        False
    """
    probe_energy = np.asarray(probe_energy, dtype=float)
    centre, ends = probe_energy[0], probe_energy[1:].reshape(2, -1)
    if not np.isfinite(centre):
        return False
    with np.errstate(invalid="ignore"):
        pair_sums = ends[0] + ends[1]
    tolerance = 1e-6 * max(abs(centre), 1.0)
    return bool(np.all(pair_sums < 2 * centre - tolerance))


def check_potential_rises(probe_energy: Any, from_potential_fn: bool) -> None:
    """Raise ``ValueError`` if the potential falls along every probe (a concrete check only).

    Args:
        probe_energy: ``U`` at :func:`probe_points` (skipped when traced, as in the trainer).
        from_potential_fn: Whether the user gave ``potential_fn`` (the message then names the
            sign convention) rather than a model.

    Example:
        >>> import numpy as np
        >>> check_potential_rises(np.array([0.0, -9.0, -9.0]), True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the potential falls in every direction probed, a thousand walker spreads ...
    """
    if isinstance(probe_energy, jax.core.Tracer) or not falls_everywhere(probe_energy):
        return
    probe_energy = np.asarray(probe_energy)
    cause = (
        "potential_fn must return the potential U = -log p, the negative log density (NumPyro's "
        "convention); flowMC's and emcee's log_prob is its negative: pass "
        "potential_fn=lambda x: -log_prob(x)."
        if from_potential_fn
        else "the model's log density grows without bound: check the signs of its "
        "numpyro.factor terms (a factor adds log density, the negative of an energy)."
    )
    raise ValueError(
        "the potential falls in every direction probed, a thousand walker spreads from the "
        f"walkers' mean (U = {probe_energy[0]:.4g} there, at most "
        f"{np.nanmax(probe_energy[1:]):.4g} far away): exp(-U) is not a normalisable density, "
        f"so there is nothing to sample. {cause}"
    )
