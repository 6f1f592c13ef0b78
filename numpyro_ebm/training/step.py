"""One training step, pure: a data batch, the objective's batch and loss, an optimizer step.

:func:`train_step` maps a :class:`TrainState` to the next; it knows nothing of any objective
beyond the :class:`~numpyro_ebm.training.objectives.Objective` interface. For ``pcd`` it is
[A] Alg. 1: the persistent walkers move on the current ``E_θ`` and are the negatives of the
contrastive loss.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from flowjax.distributions import AbstractDistribution

from numpyro_ebm.training.objectives import Metrics, Objective

if TYPE_CHECKING:
    from numpyro_ebm.training.trainer import Trainer

__all__ = ["TrainResult", "TrainState", "check_given_state", "train_chunk", "train_step"]


class TrainState(NamedTuple):
    """Everything a training step needs, and all that changes during training.

    Attributes:
        energy_params: Trainable part of the energy (its floating-point arrays,
            ``eqx.filter(energy, eqx.is_inexact_array)``); the objective's samples follow it.
        average_params: Exponential moving average of ``energy_params`` (Polyak averaging),
            the trained model when ``ema_decay > 0``.
        opt_state: State of the energy's optimizer.
        objective_state: State of the objective (walkers, flow, its optimizer, keys, ...).
        step: EBM steps done.
        rng_key: PRNG key of the data batches.
    """

    energy_params: Any
    average_params: Any
    opt_state: Any
    objective_state: Any
    step: jax.Array
    rng_key: jax.Array


def check_given_state(state: Any, template: TrainState, walkers_shape: tuple[int, int]) -> None:
    """Raise unless ``state`` could come from a trainer of these settings.

    A state passed to :meth:`Trainer.fit` from a run on data of another dimension, with
    another network, objective, sampler or number of walkers would otherwise fail deep inside
    the step with JAX's pytree error, or train on with settings other than those recorded.

    Args:
        state: The given state.
        template: The trainer's initial state (structure and shapes).
        walkers_shape: ``(num_walkers, dim)`` of the trainer.

    Raises:
        TypeError: If ``state`` is not a :class:`TrainState`.
        ValueError: If its energy parameters or its objective's state differ in structure or
            shapes.

    Example:
        >>> import jax.numpy as jnp
        >>> template = TrainState({"w": jnp.zeros((3, 8))}, None, None, jnp.zeros((16, 3)), 0, None)
        >>> state = template._replace(energy_params={"w": jnp.zeros((2, 8))})
        >>> check_given_state(state, template, (16, 3))
        Traceback (most recent call last):
        ...
        ValueError: expected a `state` of this trainer (points of dimension 3, 16 walkers): ...
    """
    if not isinstance(state, TrainState):
        raise TypeError(
            "expected `state` a TrainState (`trainer.init_state()` or a fit's `result.state`), "
            f"got {type(state).__name__}"
        )
    num_walkers, dim = walkers_shape
    expected_of = (
        f"expected a `state` of this trainer (points of dimension {dim}, {num_walkers} walkers)"
    )
    given, expected = _shapes(state.energy_params), _shapes(template.energy_params)
    if given != expected:
        raise ValueError(
            f"{expected_of}: energy parameters of shapes {expected[1]}, got {given[1]} (a state "
            "of a run on other data, or with another network?)"
        )
    given, expected = state.objective_state, template.objective_state
    if type(given) is not type(expected):
        raise ValueError(
            f"{expected_of}: an objective state {type(expected).__name__}, got "
            f"{type(given).__name__} (a state of a run with another objective or sampler?)"
        )
    for (path, shape), (_, expected_shape) in zip(_layout(given), _layout(expected), strict=False):
        if shape != expected_shape:
            raise ValueError(
                f"{expected_of}: objective state{path} of shape {expected_shape}, got {shape} "
                "(a state of a run with other settings?)"
            )
    if len(_layout(given)) != len(_layout(expected)):
        raise ValueError(f"{expected_of}: an objective state of other fields")


def _layout(tree: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Each leaf's path and shape."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [(jax.tree_util.keystr(path), tuple(jnp.shape(leaf))) for path, leaf in leaves]


def _shapes(tree: Any) -> tuple[Any, list[tuple[int, ...]]]:
    """The structure of a pytree and the shapes of its leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [tuple(jnp.shape(leaf)) for leaf in leaves]


class TrainResult(NamedTuple):
    """What :meth:`Trainer.fit` returns.

    Attributes:
        energy: The trained energy module ``E_θ``.
        flow: The objective's flow (``None`` if it has none, e.g. ``pcd`` with ``ula``).
        state: The final :class:`TrainState`.
        best_state: The state of the best validation log-likelihood, or ``None`` without
            validation data.
        history: One dict per epoch (see :meth:`Trainer.fit`).
        timings: Seconds spent: ``"init_s"``, ``"first_chunk_s"`` (compilation included),
            ``"train_s"`` (all steps of this call).
        trainer: The trainer, for its energy functions, objective and dataset.
    """

    energy: eqx.Module
    flow: AbstractDistribution | None
    state: TrainState
    best_state: TrainState | None
    history: list[dict[str, Any]]
    timings: dict[str, float]
    trainer: Trainer


def train_step(
    state: TrainState,
    data: jax.Array,
    *,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    ema_decay: float = 0.0,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, Metrics]:
    """One step: data batch, the objective's batch and loss gradient, optimizer step.

    Pure and jittable.

    Args:
        state: Current state.
        data: Training data ``(n, d)``; the batch is drawn with replacement.
        objective: The objective whose state is ``state.objective_state``.
        optimizer: The energy's optax optimizer.
        batch_size: Data points per step.
        ema_decay: Decay of the moving average of the energy's parameters.
        batch_sharding: Split the data batch over devices this way (data parallelism: each
            device takes its share of the loss; XLA sums the gradient); ``None``: as XLA likes.

    Returns:
        The next state and the step's metrics: ``loss`` and the objective's own.
    """
    rng_key, key_batch = jax.random.split(state.rng_key)
    rows = jax.random.randint(key_batch, (batch_size,), 0, data.shape[0])
    positives = data[rows]
    if batch_sharding is not None:
        positives = jax.lax.with_sharding_constraint(positives, batch_sharding)
    objective_state, batch, prepare_metrics = objective.prepare(
        state.objective_state, state.energy_params, positives
    )
    (loss, loss_metrics), grads = jax.value_and_grad(objective.loss, has_aux=True)(
        state.energy_params, positives, batch
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.energy_params)
    energy_params = optax.apply_updates(state.energy_params, updates)
    average_params = jax.tree.map(
        lambda average, new: ema_decay * average + (1.0 - ema_decay) * new,
        state.average_params,
        energy_params,
    )
    new_state = TrainState(
        energy_params, average_params, opt_state, objective_state, state.step + 1, rng_key
    )
    return new_state, {"loss": loss, **loss_metrics, **prepare_metrics}


def train_chunk(
    state: TrainState,
    data: jax.Array,
    frozen: jax.Array | bool,
    *,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    ema_decay: float,
    num_steps: int,
    num_traced: int,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, tuple[Metrics, jax.Array | None]]:
    """``num_steps`` steps of :func:`train_step` in one ``lax.scan``, the trainer's program.

    Args:
        state: Current state.
        data: Training data ``(n, d)``.
        frozen: Keep the energy, its average and its optimizer state as they are: only the
            objective's samples move (diagnostic chains of the final model). The selection is
            exact, so training runs the same numbers either way.
        objective: The objective.
        optimizer: The energy's optax optimizer.
        batch_size: Data points per step.
        ema_decay: Decay of the moving average of the energy's parameters.
        num_steps: Steps to run.
        num_traced: Samples whose paths are returned (the first ones).
        batch_sharding: Layout of each data batch over devices (see :func:`train_step`).

    Returns:
        The state after the steps, and per step its metrics and the first ``num_traced`` of
        the objective's samples (``None`` if it keeps none).
    """

    def one_step(state, _):
        new_state, metrics = train_step(
            state,
            data,
            objective=objective,
            optimizer=optimizer,
            batch_size=batch_size,
            ema_decay=ema_decay,
            batch_sharding=batch_sharding,
        )
        new_state = new_state._replace(
            **{
                name: jax.tree.map(
                    lambda old, new: jnp.where(frozen, old, new),
                    getattr(state, name),
                    getattr(new_state, name),
                )
                for name in ("energy_params", "average_params", "opt_state")
            }
        )
        positions = objective.positions(new_state.objective_state)
        traced = None if positions is None else positions[:num_traced]
        return new_state, (metrics, traced)

    return jax.lax.scan(one_step, state, length=num_steps)
