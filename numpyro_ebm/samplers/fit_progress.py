"""When to stop fitting the flow during warm-up: the plateau of its global acceptance.

Fitting costs most of a warm-up round (``num_fit_steps`` Adam steps). It stops once the
smoothed mean global acceptance has not gained for ``fit_patience`` rounds, unless the flow is
still being learnt (acceptance under 0.1) or a walker is stranded where the flow has almost no
mass (:func:`update_fit_progress`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "FitProgress",
    "init_fit_progress",
    "smooth_accept_prob",
    "still_fitting",
    "update_fit_progress",
]


#: Smoothing of the global acceptance that decides when fitting stops: an exponential moving
#: average over about ten rounds, so one lucky round does not count as progress.
_ACCEPT_SMOOTHING = 0.1
#: A gain smaller than this (one walker in a hundred) is no progress.
_MIN_ACCEPT_GAIN = 0.01
#: Fitting never stops while the smoothed global acceptance is below this: the flow is still
#: being learnt. In d = 64 the acceptance stays near 0 for over 50 rounds before it rises to
#: about 0.25 (``benchmarks/bimodal.py``), so a plateau below this is not the end of learning.
_MIN_ACCEPT_TO_STOP = 0.1


def smooth_accept_prob(smoothed: jax.Array, observed: jax.Array) -> jax.Array:
    """One step of the exponential moving average of an acceptance rate."""
    return smoothed + _ACCEPT_SMOOTHING * (observed - smoothed)


class FitProgress(NamedTuple):
    """How the flow's global acceptance evolves over a window.

    Attributes:
        accept_prob: Smoothed mean global acceptance.
        best_accept_prob: Its highest value in the window at the last real gain.
        rounds_without_gain: Rounds since that gain.
    """

    accept_prob: jax.Array
    best_accept_prob: jax.Array
    rounds_without_gain: jax.Array


def init_fit_progress(dtype=jnp.float32) -> FitProgress:
    """No acceptance seen yet."""
    zero = jnp.zeros((), dtype)
    return FitProgress(zero, zero, jnp.zeros((), jnp.int32))


def update_fit_progress(
    progress: FitProgress, global_accept_prob: jax.Array, uncovered: jax.Array | bool = False
) -> FitProgress:
    """Fold one round's mean global acceptance into the progress record.

    A round with a stranded walker (``uncovered``: one sits where the flow has almost no
    mass, see :func:`~numpyro_ebm.samplers.global_moves.stranded_walkers`) counts as a gain:
    the flow still has a region to learn, however flat the acceptance. Without this, fitting
    stopped once the acceptance plateaued on the bulk of a thin curved ridge, before the local
    moves had carried walkers to its ends; the frozen flow never covered them and a quarter
    of E[x1²] was lost (docs/method.md, "Stranded walkers").

    Example:
        >>> import jax.numpy as jnp
        >>> progress = init_fit_progress()
        >>> for _ in range(100):
        ...     progress = update_fit_progress(progress, jnp.array(0.9))
        >>> int(progress.rounds_without_gain) > 50
        True
        >>> int(update_fit_progress(progress, jnp.array(0.9), uncovered=True).rounds_without_gain)
        0
    """
    smoothed = smooth_accept_prob(progress.accept_prob, jnp.nan_to_num(global_accept_prob))
    gained = smoothed > progress.best_accept_prob + _MIN_ACCEPT_GAIN
    return FitProgress(
        accept_prob=smoothed,
        best_accept_prob=jnp.where(gained, smoothed, progress.best_accept_prob),
        rounds_without_gain=jnp.where(gained | uncovered, 0, progress.rounds_without_gain + 1),
    )


def still_fitting(progress: FitProgress, patience: int | None) -> jax.Array:
    """Whether the flow should still be fitted.

    It should while the smoothed acceptance is below ``_MIN_ACCEPT_TO_STOP`` (0.1) or has
    gained within the last ``patience`` rounds; ``patience=None`` fits for ever.

    Example:
        >>> import jax.numpy as jnp
        >>> progress = init_fit_progress()
        >>> for _ in range(100):  # a flat acceptance of 0.02: the flow is still being learnt
        ...     progress = update_fit_progress(progress, jnp.array(0.02))
        >>> bool(still_fitting(progress, 50))
        True
        >>> for _ in range(100):  # a plateau at 0.5
        ...     progress = update_fit_progress(progress, jnp.array(0.5))
        >>> bool(still_fitting(progress, 50))
        False
    """
    if patience is None:
        return jnp.array(True)
    learning = progress.accept_prob < _MIN_ACCEPT_TO_STOP
    return learning | (progress.rounds_without_gain < patience)
