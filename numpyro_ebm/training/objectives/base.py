"""The objective interface: how a training loss and its gradient are made from a data batch.

An *objective* is a small set of pure functions over its own state (walkers, a replay buffer,
a flow, a noise key), built once from the energy's static part and driven by the trainer:

- ``init(rng_key, walkers, energy_params) -> state``: outside ``jit``, once; ``walkers`` are
  ``num_walkers`` points drawn from the tilt ρ (an empty array when ``num_walkers == 0``);
- ``prepare(state, energy_params, positives) -> (state, batch, metrics)``: everything that is
  not differentiated (negatives, noise, a flow step), jittable;
- ``loss(energy_params, positives, batch) -> (loss, metrics)``: the scalar whose gradient in
  ``energy_params`` the trainer's optimizer follows, jittable;
- ``positions(state)``: the samples the objective keeps (the negatives), or ``None``;
- ``get_flow(state)``: its flow, or ``None``.

Each objective also has a frozen settings dataclass, a subclass of :class:`ObjectiveSettings`,
that validates its fields and builds the :class:`Objective`. :class:`~numpyro_ebm.training.
TrainConfig` holds one such settings object; adding an objective means writing a settings class
and registering it in :data:`numpyro_ebm.training.objectives.OBJECTIVES` (no trainer code).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from flowjax.distributions import AbstractDistribution

from numpyro_ebm._checks import store_python_scalars

__all__ = [
    "Metrics",
    "Objective",
    "ObjectiveContext",
    "ObjectiveSettings",
    "ebm_loss",
]

#: Metrics of a step: scalar arrays by name (they become the history's columns).
Metrics = dict[str, jax.Array]


class ObjectiveContext(NamedTuple):
    """What the trainer knows when it builds an objective.

    Attributes:
        energy: The initial energy module ``E_θ`` (objectives keep its static part).
        dim: Dimension of a point.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        batch_size: Data points per step.
    """

    energy: eqx.Module
    dim: int
    base_scale: float
    batch_size: int

    def energy_partition(self) -> tuple[Any, Any]:
        """``(params, static)``: the energy's arrays and the rest (``eqx.partition``)."""
        return eqx.partition(self.energy, eqx.is_inexact_array)


class Objective(NamedTuple):
    """A training objective: pure ``init`` / ``prepare`` / ``loss`` over a state.

    Attributes:
        name: The registered name (``"pcd"``, ``"dsm"``, ...).
        num_walkers: Points drawn from ρ that :attr:`init` receives (0: none).
        init: ``init(rng_key, walkers, energy_params) -> state``; outside ``jit``.
        prepare: ``prepare(state, energy_params, positives) -> (state, batch, metrics)``.
        loss: ``loss(energy_params, positives, batch) -> (loss, metrics)``; differentiated in
            ``energy_params``.
        positions: ``positions(state)``: the kept samples ``(n, d)`` (the negatives), or
            ``None`` when the objective keeps none.
        get_flow: ``get_flow(state)``: the objective's flow, or ``None``.
        persistent: Whether :attr:`positions` are persistent Markov chains, whose mixing
            (R̂ across walkers) is a property of the method.
    """

    name: str
    num_walkers: int
    init: Callable[[jax.Array, jax.Array, Any], Any]
    prepare: Callable[[Any, Any, jax.Array], tuple[Any, Any, Metrics]]
    loss: Callable[[Any, jax.Array, Any], tuple[jax.Array, Metrics]]
    positions: Callable[[Any], jax.Array | None]
    get_flow: Callable[[Any], AbstractDistribution | None]
    persistent: bool = False


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
    """Base of the objectives' settings: frozen, validated, JSON round-trip, builds the objective.

    Subclasses set :attr:`name`, declare their settings as dataclass fields, validate them in
    :meth:`check` and implement :meth:`build`.
    """

    name: ClassVar[str] = ""

    def __post_init__(self):
        store_python_scalars(self)
        self.check()

    def check(self) -> None:
        """Validate the settings (called on construction, after NumPy scalars became numbers).

        Raises:
            ValueError: Naming a setting, what it expects and what it got.
        """

    def build(self, context: ObjectiveContext) -> Objective:
        """Build the objective for a model.

        Args:
            context: The energy, dimension, tilt and batch size.

        Returns:
            The objective.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def replace(self, **changes: Any) -> ObjectiveSettings:
        """A copy with some settings changed (validated again).

        Args:
            **changes: Settings to change.

        Returns:
            The new settings.
        """
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the settings."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def unused_settings(self, names: Any) -> list[str]:
        """Those of ``names`` that these settings hold but do not use (none by default).

        ``pcd`` holds every sampler's settings and uses only its chosen sampler's.
        """
        return []

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict, with the objective's ``name``."""
        return {"name": self.name, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> ObjectiveSettings:
        """Rebuild settings written by :meth:`to_dict` (the ``name`` key is optional).

        Args:
            settings: A dict of settings.

        Returns:
            The settings.

        Raises:
            ValueError: For an unknown setting or another objective's name.
        """
        settings = dict(settings)
        name = settings.pop("name", cls.name)
        if name != cls.name:
            raise ValueError(f"expected settings of objective {cls.name!r}, got {name!r}")
        unknown = sorted(set(settings) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"expected settings of objective {cls.name!r} among "
                f"{sorted(cls.field_names())}, got unknown {unknown}"
            )
        return cls(**settings)


def ebm_loss(
    energy_params: Any,
    energy_static: Any,
    positives: jax.Array,
    negatives: jax.Array,
    l2_penalty: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Contrastive loss whose gradient is minus the log-likelihood gradient (METHOD.md §1).

    ``mean E(x⁺) - mean E(x⁻) + l2_penalty (mean E(x⁺)² + mean E(x⁻)²)``. The tilt ``ρ`` does
    not depend on θ, so it drops out of the loss; the negatives are constants.

    Args:
        energy_params: Array part of the energy.
        energy_static: The rest of the energy.
        positives: Data batch ``(n, d)``.
        negatives: Negatives ``(m, d)``.
        l2_penalty: Weight of the energy-magnitude penalty.

    Returns:
        ``(loss, energy_gap)`` with ``energy_gap = mean E(x⁺) - mean E(x⁻)``.

    Example:
        >>> import jax.numpy as jnp
        >>> energy = lambda x: 2.0 * x[0]  # E_θ(x) = θ x with θ = 2, no arrays
        >>> loss, gap = ebm_loss(None, energy, jnp.ones((3, 1)), jnp.zeros((2, 1)), 0.5)
        >>> float(gap), float(loss)  # 2 - 0, plus 0.5 (2² + 0²)
        (2.0, 4.0)
    """
    energy = eqx.combine(energy_params, energy_static)
    negatives = jax.lax.stop_gradient(negatives)
    positive_energy = jax.vmap(energy)(positives)
    negative_energy = jax.vmap(energy)(negatives)
    gap = jnp.mean(positive_energy) - jnp.mean(negative_energy)
    penalty = jnp.mean(positive_energy**2) + jnp.mean(negative_energy**2)
    return gap + l2_penalty * penalty, gap


def contrastive_loss_fn(
    energy_static: Any, l2_penalty: float
) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Metrics]]:
    """The :attr:`Objective.loss` of every objective whose ``batch`` is its negatives.

    Args:
        energy_static: Non-array part of the energy.
        l2_penalty: Weight of the energy-magnitude penalty of :func:`ebm_loss`.

    Returns:
        ``loss(energy_params, positives, negatives) -> (loss, {"energy_gap": ...})``.
    """

    def loss(energy_params, positives, negatives):
        value, gap = ebm_loss(energy_params, energy_static, positives, negatives, l2_penalty)
        return value, {"energy_gap": gap}

    return loss


def check_non_negative(name: str, value: Any) -> float:
    """``value`` as a float, if it is a finite number ``>= 0``; a ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < jnp.inf:
        raise ValueError(f"expected `{name}` to be a finite number >= 0, got {value!r}")
    return float(value)
