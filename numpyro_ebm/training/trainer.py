"""Training of the tilted EBM with persistent negatives ([A] Alg. 1).

The model is ``p_θ(x) ∝ exp(-E_θ(x)) ρ(x)`` with ``ρ = N(0, σ² I)`` (METHOD.md §1). Each step

1. draws a data batch ``x⁺``;
2. moves the persistent walkers with a negative sampler (:mod:`.negatives`) on the *current*
   ``E_θ``: the walkers are the negatives ``x⁻``, and the ``flowmc`` and ``nt`` samplers take one
   maximum-likelihood step of their flow on them;
3. takes one optax step on ``mean E_θ(x⁺) - mean E_θ(x⁻) + l2 (mean E_θ(x⁺)² + mean E_θ(x⁻)²)``.

The core is pure: :func:`train_step` maps a :class:`TrainState` to the next. :class:`Trainer`
jits a ``lax.scan`` of steps once and drives it epoch by epoch with a progress bar, a per-epoch
history, checkpoints and exact resume (the state, PRNG keys included, is the whole story: a run
resumed from a checkpoint replays the same steps as an uninterrupted one).

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flowjax.distributions import AbstractDistribution
from tqdm.auto import tqdm

from numpyro_ebm._checks import positive_float, positive_int
from numpyro_ebm.datasets import Dataset, get_dataset
from numpyro_ebm.energies import MLPEnergy, TiltedEnergy
from numpyro_ebm.metrics import zone_weights_from_energy, zone_weights_from_samples
from numpyro_ebm.training.checkpoint import (
    checkpoint_paths,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_json,
)
from numpyro_ebm.training.negatives import (
    NEGATIVE_SAMPLERS,
    ULA_STEP_SIZE,
    NegativeSampler,
    make_negative_sampler,
)
from numpyro_ebm.training.run_files import read_checkpoint_meta, read_run_settings

__all__ = [
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Trainer",
    "ebm_loss",
    "train",
    "train_step",
]

#: Name of a run directory's settings file and checkpoint folder.
SETTINGS_FILE = "settings.json"
CHECKPOINT_DIR = "checkpoints"
#: The progress bar advances at least this many times per epoch (when the step count allows).
_PROGRESS_UPDATES_PER_EPOCH = 10
#: Walkers whose paths :meth:`Trainer.negative_chains` records (the first ones).
MAX_TRACED_CHAINS = 64
#: Settings that may differ between a run and its resumption (they do not change any step).
_RESUMABLE_CHANGES = ("num_epochs",)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run. The defaults suit [A]'s 2-D experiments (METHOD.md §4).

    Attributes:
        sampler: Negative sampler: ``"flowmc"`` ([A]), ``"ula"``, ``"mala"`` or ``"nt"``.
        num_epochs: Epochs to train.
        steps_per_epoch: EBM steps per epoch.
        batch_size: Data points per step (``x⁺``); [A] uses 64-256.
        num_walkers: Persistent walkers, all used as negatives each step; [A] uses 1024-8192.
        learning_rate: Adam learning rate of the energy; [A] uses 1e-2 or 1e-3.
        flow_learning_rate: Adam learning rate of the flow (``flowmc`` and ``nt``).
        l2_penalty: Weight of ``mean E(x⁺)² + mean E(x⁻)²`` in the loss.
        ema_decay: Decay of the exponential moving average of the energy's parameters that
            is the trained model (Polyak averaging: it averages out the random walk that
            stochastic gradients give the relative mode weights); 0 keeps the last iterate.
        base_scale: σ of the tilt ρ = N(0, σ² I); ``None`` takes the root mean square of the
            training data's coordinates, so that ρ covers the data.
        energy_width: Units per hidden layer of the :class:`~numpyro_ebm.energies.MLPEnergy`.
        energy_depth: Hidden layers of the energy.
        num_rounds: ``flowmc`` / ``mala`` kernel rounds per EBM step.
        num_local_steps: MALA steps per round (``flowmc``, ``mala``), ULA steps per EBM step
            (``ula``), latent MALA steps per EBM step (``nt``).
        num_particles: i-SIR particles ``N`` ([A]: 32-128).
        global_move: ``"isir"`` ([A]) or ``"imh"`` for ``flowmc``.
        step_size: Initial MALA step size (``flowmc``, ``mala``, ``nt``; adapted).
        ula_step_size: ULA step ``η``; [A] uses ``(0.125)²/2``.
        fit_batch_size: Negatives per flow gradient step.
        num_data: Training points drawn from a built-in dataset (file data is used as given).
        checkpoint_every: Steps between checkpoints when training into a directory; ``None``
            checkpoints at the end of every epoch.
        grid_points: Points per axis of the 2-D grid that integrates mode weights.
        seed: Seed of everything random in the run.
    """

    sampler: str = "flowmc"
    num_epochs: int = 10
    steps_per_epoch: int = 200
    batch_size: int = 256
    num_walkers: int = 512
    learning_rate: float = 1e-3
    flow_learning_rate: float = 1e-3
    l2_penalty: float = 0.0
    ema_decay: float = 0.995
    base_scale: float | None = None
    energy_width: int = 64
    energy_depth: int = 3
    num_rounds: int = 1
    num_local_steps: int = 5
    num_particles: int = 32
    global_move: str = "isir"
    step_size: float = 0.1
    ula_step_size: float = ULA_STEP_SIZE
    fit_batch_size: int = 256
    num_data: int = 50_000
    checkpoint_every: int | None = None
    grid_points: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.sampler not in NEGATIVE_SAMPLERS:
            raise ValueError(f"expected `sampler` in {NEGATIVE_SAMPLERS}, got {self.sampler!r}")
        if self.global_move not in ("isir", "imh"):
            raise ValueError(f"expected `global_move` 'isir' or 'imh', got {self.global_move!r}")
        for name in (
            "num_epochs",
            "steps_per_epoch",
            "batch_size",
            "energy_width",
            "energy_depth",
            "num_rounds",
            "num_local_steps",
            "fit_batch_size",
            "num_data",
        ):
            positive_int(name, getattr(self, name), 1)
        positive_int("num_walkers", self.num_walkers, 2)
        positive_int("num_particles", self.num_particles, 2)
        positive_int("grid_points", self.grid_points, 2)
        positive_int("seed", self.seed, 0)
        if self.checkpoint_every is not None:
            positive_int("checkpoint_every", self.checkpoint_every, 1)
        for name in ("learning_rate", "flow_learning_rate", "step_size", "ula_step_size"):
            positive_float(name, getattr(self, name))
        if self.base_scale is not None:
            positive_float("base_scale", self.base_scale)
        if not (isinstance(self.ema_decay, int | float) and 0 <= self.ema_decay < 1):
            raise ValueError(f"expected `ema_decay` in [0, 1), got {self.ema_decay!r}")
        if not (isinstance(self.l2_penalty, int | float) and self.l2_penalty >= 0):
            raise ValueError(f"expected `l2_penalty` >= 0, got {self.l2_penalty!r}")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (validated again).

        Args:
            **changes: Settings to change.

        Returns:
            The new settings.
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> TrainConfig:
        """Rebuild settings written by :meth:`to_dict`.

        Args:
            settings: A dict of settings.

        Returns:
            The settings.

        Raises:
            ValueError: For an unknown setting.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"expected settings among {sorted(known)}, got unknown {unknown}")
        return cls(**settings)


class TrainState(NamedTuple):
    """Everything a training step needs, and all that changes during training.

    Attributes:
        energy_params: Array part of the energy (``eqx.filter(energy, eqx.is_array)``); the
            negatives follow this energy.
        average_params: Exponential moving average of ``energy_params`` (Polyak averaging),
            the trained model when ``ema_decay > 0``.
        opt_state: State of the energy's optimizer.
        sampler_state: State of the negative sampler (walkers, flow, its optimizer, keys).
        step: EBM steps done.
        rng_key: PRNG key of the data batches.
    """

    energy_params: Any
    average_params: Any
    opt_state: Any
    sampler_state: Any
    step: jax.Array
    rng_key: jax.Array


class StepInfo(NamedTuple):
    """Diagnostics of one training step.

    Attributes:
        loss: The penalised loss.
        energy_gap: ``mean E(x⁺) - mean E(x⁻)``, the unpenalised loss.
        accept_prob: Mean local acceptance of the negative sampler.
        global_accept_prob: Mean acceptance of the flow's global move.
        flow_loss: The flow's loss (NaN if it was not fitted).
    """

    loss: jax.Array
    energy_gap: jax.Array
    accept_prob: jax.Array
    global_accept_prob: jax.Array
    flow_loss: jax.Array


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


def train_step(
    state: TrainState,
    data: jax.Array,
    *,
    energy_static: Any,
    sampler: NegativeSampler,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    l2_penalty: float = 0.0,
    ema_decay: float = 0.0,
) -> tuple[TrainState, StepInfo]:
    """One EBM step of [A] Alg. 1: data batch, negatives from the sampler, optimizer step.

    Pure and jittable.

    Args:
        state: Current state.
        data: Training data ``(n, d)``; the batch is drawn with replacement.
        energy_static: Non-array part of the energy.
        sampler: The negative sampler whose state is ``state.sampler_state``.
        optimizer: The energy's optax optimizer.
        batch_size: Data points per step.
        l2_penalty: Weight of the energy-magnitude penalty.
        ema_decay: Decay of the moving average of the energy's parameters.

    Returns:
        The next state and the step's diagnostics.
    """
    rng_key, key_batch = jax.random.split(state.rng_key)
    rows = jax.random.randint(key_batch, (batch_size,), 0, data.shape[0])
    positives = data[rows]
    sampler_state, sampler_info = sampler.step(state.sampler_state, state.energy_params)
    negatives = sampler.positions(sampler_state)
    (loss, gap), grads = jax.value_and_grad(ebm_loss, has_aux=True)(
        state.energy_params, energy_static, positives, negatives, l2_penalty
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.energy_params)
    energy_params = optax.apply_updates(state.energy_params, updates)
    average_params = jax.tree.map(
        lambda average, new: ema_decay * average + (1.0 - ema_decay) * new,
        state.average_params,
        energy_params,
    )
    new_state = TrainState(
        energy_params, average_params, opt_state, sampler_state, state.step + 1, rng_key
    )
    info = StepInfo(
        loss=loss,
        energy_gap=gap,
        accept_prob=sampler_info.accept_prob,
        global_accept_prob=sampler_info.global_accept_prob,
        flow_loss=sampler_info.flow_loss,
    )
    return new_state, info


class TrainResult(NamedTuple):
    """What :meth:`Trainer.fit` returns.

    Attributes:
        energy: The trained energy module ``E_θ``.
        flow: The sampler's flow (``None`` for ``ula`` and ``mala``).
        state: The final :class:`TrainState`.
        history: One dict per epoch (see :meth:`Trainer.fit`).
        timings: Seconds spent: ``"init_s"``, ``"first_chunk_s"`` (compilation included),
            ``"train_s"`` (all steps of this call).
        trainer: The trainer, for its energy functions, sampler and dataset.
    """

    energy: eqx.Module
    flow: AbstractDistribution | None
    state: TrainState
    history: list[dict[str, Any]]
    timings: dict[str, float]
    trainer: Trainer


def _strongly_typed(tree: Any) -> Any:
    """Give weakly typed leaves (e.g. ``jnp.array(0)``) their strong dtype.

    A checkpoint stores dtypes, not weak types: without this a resumed state would not match
    the compiled training program and would be compiled again.
    """

    def strong(leaf):
        if isinstance(leaf, jax.Array) and jax.typeof(leaf).weak_type:
            return jnp.asarray(leaf, dtype=leaf.dtype)
        return leaf

    return jax.tree.map(strong, tree)


def _resolve_dataset(dataset: Dataset | str | os.PathLike) -> tuple[Dataset, str]:
    if isinstance(dataset, Dataset):
        return dataset, dataset.name
    return get_dataset(dataset), str(dataset)


def _largest_divisor_at_most(number: int, bound: int) -> int:
    return max(d for d in range(1, max(1, min(number, bound)) + 1) if number % d == 0)


class Trainer:
    """Flow-assisted (or baseline) training of a tilted EBM on a dataset.

    Args:
        dataset: A :class:`~numpyro_ebm.datasets.Dataset`, a built-in name, or a data file path.
        config: The run's settings.
        energy_optimizer: The energy's optax optimizer; by default ``optax.adam`` with
            ``config.learning_rate``.

    Example:
        >>> config = TrainConfig(sampler="ula", num_epochs=1, steps_per_epoch=2, num_walkers=8,
        ...                      batch_size=8, energy_width=4, energy_depth=1, num_data=64,
        ...                      grid_points=10)
        >>> result = Trainer("two-modes-2to1", config).fit(progress_bar=False)
        >>> int(result.state.step), len(result.history)
        (2, 1)
    """

    def __init__(
        self,
        dataset: Dataset | str | os.PathLike,
        config: TrainConfig | None = None,
        *,
        energy_optimizer: optax.GradientTransformation | None = None,
    ):
        self.config = TrainConfig() if config is None else config
        self.dataset, self.dataset_spec = _resolve_dataset(dataset)
        cfg = self.config
        keys = jax.random.split(jax.random.key(cfg.seed), 5)
        self._key_energy, self._key_walkers, self._key_sampler, self._key_train = keys[1:]
        if self.dataset.data is not None:
            data = np.asarray(self.dataset.data, dtype=np.float32)
        else:
            data = np.asarray(self.dataset.sample(keys[0], cfg.num_data), dtype=np.float32)
        self.data = jnp.asarray(data)
        self.dim = int(self.data.shape[1])
        self.base_scale = (
            float(cfg.base_scale)
            if cfg.base_scale is not None
            else float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
        )
        energy = MLPEnergy(
            self.dim, width=cfg.energy_width, depth=cfg.energy_depth, key=self._key_energy
        )
        self._initial_energy_params, self.energy_static = eqx.partition(energy, eqx.is_array)
        self.sampler = make_negative_sampler(
            cfg.sampler, energy, self.dim, self.base_scale, **self._sampler_options()
        )
        self.optimizer = (
            optax.adam(cfg.learning_rate) if energy_optimizer is None else energy_optimizer
        )
        checkpoint_every = cfg.checkpoint_every or cfg.steps_per_epoch
        # Every jitted call runs the same number of steps, so there is one compilation and a
        # resumed run replays exactly the same compiled program as an uninterrupted one.
        self.chunk_size = _largest_divisor_at_most(
            math.gcd(cfg.steps_per_epoch, checkpoint_every),
            max(1, cfg.steps_per_epoch // _PROGRESS_UPDATES_PER_EPOCH),
        )
        self.checkpoint_every = checkpoint_every
        step_fn = self._step_fn()
        num_traced = min(cfg.num_walkers, MAX_TRACED_CHAINS)

        def run_chunk(state, data, frozen):
            def one_step(state, _):
                new_state, info = step_fn(state, data)
                # Frozen: only the sampler moves (diagnostic chains of the final model). The
                # selection is exact, so training runs the same numbers either way.
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
                traced = self.sampler.positions(new_state.sampler_state)[:num_traced]
                return new_state, (info, traced)

            return jax.lax.scan(one_step, state, length=self.chunk_size)

        self._run_chunk = jax.jit(run_chunk)
        self._total_energy = jax.jit(lambda params, x: jax.vmap(self._tilted(params))(x))

    # -- building blocks ------------------------------------------------------------------

    def _sampler_options(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.sampler == "flowmc":
            return dict(
                global_move=cfg.global_move,
                num_rounds=cfg.num_rounds,
                num_particles=cfg.num_particles,
                num_local_steps=cfg.num_local_steps,
                step_size=cfg.step_size,
                flow_learning_rate=cfg.flow_learning_rate,
                fit_batch_size=cfg.fit_batch_size,
            )
        if cfg.sampler == "mala":
            return dict(
                num_rounds=cfg.num_rounds,
                num_local_steps=cfg.num_local_steps,
                step_size=cfg.step_size,
            )
        if cfg.sampler == "ula":
            return dict(num_steps=cfg.num_local_steps, step_size=cfg.ula_step_size)
        return dict(
            num_steps=cfg.num_local_steps,
            step_size=cfg.step_size,
            flow_learning_rate=cfg.flow_learning_rate,
            fit_batch_size=cfg.fit_batch_size,
        )

    def _step_fn(self) -> Callable[[TrainState, jax.Array], tuple[TrainState, StepInfo]]:
        cfg = self.config

        def step(state, data):
            return train_step(
                state,
                data,
                energy_static=self.energy_static,
                sampler=self.sampler,
                optimizer=self.optimizer,
                batch_size=cfg.batch_size,
                l2_penalty=cfg.l2_penalty,
                ema_decay=cfg.ema_decay,
            )

        return step

    def _tilted(self, energy_params: Any) -> TiltedEnergy:
        return TiltedEnergy(eqx.combine(energy_params, self.energy_static), self.base_scale)

    def init_state(self) -> TrainState:
        """The state before the first step: ``E ≡ 0``, walkers drawn from ρ.

        Returns:
            The initial state (the same for the same settings).
        """
        walkers = self.base_scale * jax.random.normal(
            self._key_walkers, (self.config.num_walkers, self.dim)
        )
        params = self._initial_energy_params
        state = TrainState(
            energy_params=params,
            average_params=params,
            opt_state=self.optimizer.init(params),
            sampler_state=self.sampler.init(self._key_sampler, walkers, params),
            step=jnp.zeros((), jnp.int32),
            rng_key=self._key_train,
        )
        return _strongly_typed(state)

    # -- the model ------------------------------------------------------------------------

    def model_params(self, state: TrainState) -> Any:
        """The trained model's energy parameters: the moving average, or the last iterate."""
        return state.average_params if self.config.ema_decay > 0 else state.energy_params

    def energy(self, state: TrainState) -> eqx.Module:
        """The trained energy module ``E_θ`` of a state (see :meth:`model_params`)."""
        return eqx.combine(self.model_params(state), self.energy_static)

    def total_energy_fn(self, state: TrainState) -> Callable[[jax.Array], jax.Array]:
        """``x (n, d) -> E_θ(x) - log ρ(x) (n,)``, the model's -log unnormalised density."""
        params = self.model_params(state)
        return lambda x: self._total_energy(params, jnp.asarray(x))

    def negatives(self, state: TrainState) -> jax.Array:
        """The walkers (negatives) of a state, ``(num_walkers, dim)``."""
        return self.sampler.positions(state.sampler_state)

    def negative_chains(self, state: TrainState, num_steps: int) -> np.ndarray:
        """Continue the persistent negatives with the energy frozen and record their paths.

        Runs the training program itself with the energy's update switched off (so nothing
        is compiled again): the sampler keeps moving, and for ``flowmc`` / ``nt`` keeps fitting
        its flow, on the last iterate's energy. The first walkers are recorded as chains.

        Args:
            state: A training state (not modified).
            num_steps: Steps to record, rounded up to a multiple of ``chunk_size``.

        Returns:
            Positions of shape ``(min(num_walkers, 64), num_steps, dim)``.
        """
        positive_int("num_steps", num_steps, 1)
        paths = []
        for _ in range(-(-num_steps // self.chunk_size)):
            state, (_, traced) = self._run_chunk(state, self.data, True)
            paths.append(np.asarray(traced))
        return np.swapaxes(np.concatenate(paths), 0, 1)

    def flow(self, state: TrainState) -> AbstractDistribution | None:
        """The negative sampler's flow, or ``None``."""
        return self.sampler.get_flow(state.sampler_state)

    def mode_weights(self, state: TrainState) -> np.ndarray | None:
        """Model weight of each true mode's zone, if the dataset's modes are known.

        In 2-D, ``exp(-E_θ) ρ`` is integrated on a grid over the dataset's bounds; in higher
        dimension the zones of the negatives are counted (METHOD.md §4, "Metrics").

        Args:
            state: A training state.

        Returns:
            Weights ``(k,)`` or ``None``.
        """
        means = self.dataset.mode_means
        if means is None:
            return None
        if self.dim == 2:
            weights = zone_weights_from_energy(
                self.total_energy_fn(state), means, self.dataset.bounds, self.config.grid_points
            )
        else:
            weights = zone_weights_from_samples(self.negatives(state), means)
        return np.asarray(weights, dtype=float)

    # -- the loop -------------------------------------------------------------------------

    def fit(
        self,
        state: TrainState | None = None,
        *,
        out_dir: str | os.PathLike | None = None,
        resume: bool = False,
        progress_bar: bool = True,
        keep_checkpoints: int = 2,
        num_epochs: int | None = None,
    ) -> TrainResult:
        """Train until ``num_epochs`` (by default ``config.num_epochs``) epochs are done.

        Each epoch runs ``steps_per_epoch`` steps through one jitted ``lax.scan`` and appends
        to the history a dict with ``epoch``, ``step``, the epoch means of ``loss``,
        ``energy_gap``, ``accept_prob``, ``global_accept_prob`` and ``flow_loss``,
        ``mode_weights`` (when the dataset's modes are known) and ``time_s``.

        Args:
            state: Start from this state instead of :meth:`init_state` (ignored when resuming
                from a checkpoint).
            out_dir: Directory for ``settings.json`` and ``checkpoints/``; ``None`` keeps
                nothing on disk.
            resume: Continue from the last checkpoint in ``out_dir``. The settings must equal
                the saved ones except ``num_epochs``; the result is then exactly that of an
                uninterrupted run.
            progress_bar: Show a tqdm bar per epoch.
            keep_checkpoints: Most recent checkpoints kept on disk.
            num_epochs: Epochs to reach, if not ``config.num_epochs`` (it does not change any
                step, so runs of different lengths share one compilation).

        Returns:
            The trained model, final state and history.

        Raises:
            ValueError: If ``resume`` is asked without ``out_dir``, or the saved settings
                differ from these.
        """
        positive_int("keep_checkpoints", keep_checkpoints, 1)
        cfg = self.config
        if num_epochs is not None:
            positive_int("num_epochs", num_epochs, 1)
            cfg = cfg.replace(num_epochs=num_epochs)
        time_start = time.perf_counter()
        history: list[dict[str, Any]] = []
        partial: dict[str, list[float]] = {}
        checkpoint_dir = None if out_dir is None else Path(out_dir) / CHECKPOINT_DIR
        if resume and out_dir is None:
            raise ValueError("expected `out_dir` to resume from, got None")
        # Read and check everything before writing anything: a failed call leaves the run
        # directory as it was.
        template = self.init_state() if state is None else state
        state = template
        if resume:
            self._check_saved_settings(Path(out_dir))
        found = latest_checkpoint(checkpoint_dir) if resume else None
        if resume and found is None:
            warnings.warn(
                f"no checkpoint in {str(checkpoint_dir)!r}: starting the run from step 0",
                stacklevel=2,
            )
        if found is not None:
            saved_step, path = found
            state = load_checkpoint(path, template)
            meta = read_checkpoint_meta(path.with_suffix(".json"))
            history, partial = meta["history"], meta["partial_epoch"]
            if int(state.step) != saved_step:
                raise ValueError(
                    f"{path}: expected a checkpoint at step {saved_step}, "
                    f"got a state at step {int(state.step)}"
                )
        step = int(state.step)
        if step % self.chunk_size:
            raise ValueError(
                f"expected a state whose step is a multiple of {self.chunk_size}, got {step}"
            )
        if out_dir is not None:
            if not resume:
                self._clear_run(Path(out_dir))
            write_json(Path(out_dir) / SETTINGS_FILE, self.settings(cfg.num_epochs))
        timings = {"init_s": time.perf_counter() - time_start, "first_chunk_s": 0.0}

        total_steps = cfg.num_epochs * cfg.steps_per_epoch
        time_train = time.perf_counter()
        epoch_start = time.perf_counter()
        bar = None
        while step < total_steps:
            epoch = step // cfg.steps_per_epoch
            if bar is None:
                bar = tqdm(
                    total=cfg.steps_per_epoch,
                    initial=step % cfg.steps_per_epoch,
                    desc=f"epoch {epoch + 1}/{cfg.num_epochs}",
                    disable=not progress_bar,
                    leave=True,
                )
                epoch_start = time.perf_counter()
            chunk_start = time.perf_counter()
            state, (infos, _) = self._run_chunk(state, self.data, False)
            infos = jax.device_get(infos)
            if timings["first_chunk_s"] == 0.0:
                timings["first_chunk_s"] = time.perf_counter() - chunk_start
            step += self.chunk_size
            for name, values in infos._asdict().items():
                partial.setdefault(name, []).extend(float(v) for v in values)
            bar.update(self.chunk_size)
            bar.set_postfix_str(_postfix(partial, None), refresh=False)
            if step % cfg.steps_per_epoch == 0:
                entry = self._epoch_entry(state, epoch, step, partial, epoch_start)
                history.append(entry)
                partial = {}
                bar.set_postfix_str(_postfix(None, entry))
                bar.close()
                bar = None
            if checkpoint_dir is not None and (
                step % self.checkpoint_every == 0 or step == total_steps
            ):
                self._save(checkpoint_dir, state, step, history, partial, keep_checkpoints)
        if bar is not None:
            bar.close()
        timings["train_s"] = time.perf_counter() - time_train
        return TrainResult(
            energy=self.energy(state),
            flow=self.flow(state),
            state=state,
            history=history,
            timings=timings,
            trainer=self,
        )

    def _epoch_entry(self, state, epoch, step, partial, epoch_start) -> dict[str, Any]:
        entry: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        for name, values in partial.items():
            finite = [v for v in values if math.isfinite(v)]
            entry[name] = float(np.mean(finite)) if finite else float("nan")
        weights = self.mode_weights(state)
        if weights is not None:
            entry["mode_weights"] = [float(w) for w in weights]
        entry["time_s"] = time.perf_counter() - epoch_start
        return entry

    # -- run directory --------------------------------------------------------------------

    def settings(self, num_epochs: int | None = None) -> dict[str, Any]:
        """The JSON settings of the run: config, dataset, dimension and the resolved σ.

        Args:
            num_epochs: Epochs of the run, if not ``config.num_epochs``.

        Returns:
            The settings.
        """
        config = self.config.to_dict()
        if num_epochs is not None:
            config["num_epochs"] = num_epochs
        return {
            "dataset": self.dataset_spec,
            "dim": self.dim,
            "base_scale": self.base_scale,
            "config": config,
        }

    def _check_saved_settings(self, out_dir: Path) -> None:
        path = out_dir / SETTINGS_FILE
        if not path.exists():
            if checkpoint_paths(out_dir / CHECKPOINT_DIR):
                warnings.warn(
                    f"no {SETTINGS_FILE} in {str(out_dir)!r}: the given settings cannot be "
                    "checked against the run's; resuming only if its checkpoint fits them",
                    stacklevel=3,
                )
            return
        saved, _ = read_run_settings(path)
        current = self.settings()
        differences = []
        if saved["dataset"] != current["dataset"]:
            differences.append(f"dataset: saved {saved['dataset']!r}, given {current['dataset']!r}")
        saved_config = saved["config"]
        for name, value in current["config"].items():
            if name not in _RESUMABLE_CHANGES and saved_config.get(name) != value:
                differences.append(f"{name}: saved {saved_config.get(name)!r}, given {value!r}")
        if differences:
            raise ValueError(
                f"expected the settings saved in {str(path)!r} to resume, got different ones: "
                + "; ".join(differences)
            )

    @staticmethod
    def _clear_run(out_dir: Path) -> None:
        old = checkpoint_paths(out_dir / CHECKPOINT_DIR)
        if old:
            warnings.warn(
                f"starting a new run in {str(out_dir)!r}: removing its {len(old)} checkpoints "
                "(pass resume=True to continue it instead)",
                stacklevel=3,
            )
        for _, path in old:
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)

    @staticmethod
    def _save(checkpoint_dir, state, step, history, partial, keep_checkpoints) -> None:
        path = checkpoint_dir / f"step_{step:08d}.eqx"
        save_checkpoint(path, state)
        # The JSON is written last: a checkpoint counts only once both files exist.
        write_json(
            path.with_suffix(".json"), {"step": step, "history": history, "partial_epoch": partial}
        )
        for _, old in checkpoint_paths(checkpoint_dir)[:-keep_checkpoints]:
            old.with_suffix(".json").unlink(missing_ok=True)
            old.unlink(missing_ok=True)


def _postfix(partial: dict[str, list[float]] | None, entry: dict[str, Any] | None) -> str:
    if entry is None:
        assert partial is not None
        values = {
            name: float(np.mean(partial[name]))
            for name in ("loss", "accept_prob", "global_accept_prob")
        }
    else:
        values = entry
    text = (
        f"loss {values['loss']:.3f}, acc {values['accept_prob']:.2f}, "
        f"glob {values['global_accept_prob']:.2f}"
    )
    if entry is not None and "mode_weights" in entry:
        text += ", w " + "/".join(f"{w:.2f}" for w in entry["mode_weights"])
    return text


def train(
    dataset: Dataset | str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress_bar: bool = True,
    energy_optimizer: optax.GradientTransformation | None = None,
) -> TrainResult:
    """Train a tilted EBM on ``dataset`` (see :class:`Trainer` and :meth:`Trainer.fit`).

    Args:
        dataset: A dataset, a built-in name or a data file path.
        config: Settings; the defaults of :class:`TrainConfig` by default.
        out_dir: Directory for settings and checkpoints, or ``None``.
        resume: Continue from the last checkpoint in ``out_dir``.
        progress_bar: Show a progress bar per epoch.
        energy_optimizer: Optax optimizer of the energy (Adam with the config's rate by default).

    Returns:
        The :class:`TrainResult`.

    Example:
        >>> config = TrainConfig(sampler="ula", num_epochs=1, steps_per_epoch=2, num_walkers=8,
        ...                      batch_size=8, energy_width=4, energy_depth=1, num_data=64,
        ...                      grid_points=10)
        >>> result = train("two-modes-2to1", config, progress_bar=False)
        >>> sorted(result.history[0])[:3]
        ['accept_prob', 'energy_gap', 'epoch']
    """
    trainer = Trainer(dataset, config, energy_optimizer=energy_optimizer)
    return trainer.fit(out_dir=out_dir, resume=resume, progress_bar=progress_bar)
