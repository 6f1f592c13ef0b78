"""The trainer: drives any objective through one jitted loop, with checkpoints and exact resume.

The model is ``p_θ(x) ∝ exp(-E_θ(x)) ρ(x)`` with ``ρ = N(0, σ² I)`` (METHOD.md §1). The
*objective* (:mod:`~numpyro_ebm.training.objectives`) says how a loss and its gradient are made
from a data batch; :func:`~numpyro_ebm.training.step.train_step` takes one optax step on it.
:class:`Trainer` jits a ``lax.scan`` of steps once and drives it epoch by epoch with a progress
bar, a per-epoch history, checkpoints and exact resume (the state, PRNG keys included, is the
whole story: a run resumed from a checkpoint replays the same steps as an uninterrupted one).

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flowjax.distributions import AbstractDistribution
from jax.sharding import Mesh

from numpyro_ebm._checks import positive_int
from numpyro_ebm._warnings import warn_user
from numpyro_ebm.datasets import Dataset, get_dataset
from numpyro_ebm.energies import TiltedEnergy
from numpyro_ebm.training.checkpoint import strongly_typed
from numpyro_ebm.training.config import TrainConfig
from numpyro_ebm.training.data import training_data
from numpyro_ebm.training.energy_specs import energy_spec, training_energy
from numpyro_ebm.training.mesh import (
    MeshProgram,
    gather_to_host,
    put_on_mesh,
    replicated,
    split_leading_axis,
    split_sizes,
    training_mesh,
)
from numpyro_ebm.training.objectives import Objective, ObjectiveContext
from numpyro_ebm.training.progress import EpochProgress, chunk_size
from numpyro_ebm.training.run_dir import (
    BEST_CHECKPOINT_DIR,
    CHECKPOINT_DIR,
    open_run,
    save_training_checkpoint,
)
from numpyro_ebm.training.step import TrainResult, TrainState, check_given_state, train_chunk
from numpyro_ebm.training.validation import (
    VALIDATION_KEY,
    best_epoch,
    epoch_extra,
    mixing_message,
    model_mode_weights,
    should_stop,
)

__all__ = ["TrainResult", "Trainer"]

#: Walkers whose paths :meth:`Trainer.negative_chains` records (the first ones).
MAX_TRACED_CHAINS = 64


class Trainer:
    """Training of a tilted EBM on a dataset with any objective ([A]'s by default).

    Args:
        dataset: A :class:`~numpyro_ebm.datasets.Dataset`, a built-in name, a data file path, or
            an array of points ``(n, d)`` in raw units.
        config: The run's settings; ``TrainConfig.for_dimension(d)`` for the data's d by default.
        energy: Your own module instead of ``config.energy``'s (see ``training_energy``).
        energy_optimizer: The energy's optimizer; ``optax.adam(config.learning_rate)`` by default.
        mesh: Split walkers and batches over this mesh's devices instead of ``config.devices``
            of ``jax.devices()`` (any axis types; all its axes split the walkers).

    Example:
        >>> from numpyro_ebm.training.objectives import PCD
        >>> config = TrainConfig(PCD(sampler="ula", num_walkers=8), num_epochs=1,
        ...                      steps_per_epoch=2, batch_size=8, energy_width=4,
        ...                      energy_depth=1, num_data=64, grid_points=10)
        >>> result = Trainer("two-modes-2to1", config).fit(progress_bar=False)
        >>> int(result.state.step), len(result.history)
        (2, 1)
    """

    def __init__(
        self,
        dataset: Dataset | str | os.PathLike | np.ndarray | jax.Array,
        config: TrainConfig | None = None,
        *,
        energy: eqx.Module | None = None,
        energy_optimizer: optax.GradientTransformation | None = None,
        mesh: Mesh | None = None,
    ):
        if config is None:
            config = TrainConfig.for_dimension(get_dataset(dataset).dim)
        self.config = cfg = TrainConfig.check(config)
        keys = jax.random.split(jax.random.key(cfg.seed), 5)
        self._key_energy, self._key_walkers, self._key_objective, self._key_train = keys[1:]
        self.validation_key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
        run_data = training_data(
            dataset,
            keys[0],
            cfg.num_data,
            cfg.base_scale,
            preprocess=cfg.preprocess,
            validation_fraction=cfg.validation_fraction,
        )
        self.dataset, self.dataset_spec, self.data, self.base_scale = run_data[:4]
        self.preprocessing, self.validation_data = run_data.preprocessing, run_data.validation
        self.dim = int(self.data.shape[1])
        energy, self.config = training_energy(energy, cfg, self.dim, key=self._key_energy)
        scale = getattr(energy, "base_scale", self.base_scale)  # a FlowBaseEnergy's σ of ρ
        if not math.isclose(scale, self.base_scale, rel_tol=1e-6):
            raise ValueError(
                f"expected the energy's base_scale to be the run's σ = {self.base_scale!r} "
                f"(set TrainConfig(base_scale=...)), got {scale!r}"
            )
        self.initial_energy = energy
        self._initial_energy_params, self.energy_static = eqx.partition(
            energy, eqx.is_inexact_array
        )
        self.objective: Objective = cfg.objective.build(
            ObjectiveContext(energy, self.dim, self.base_scale, cfg.batch_size)
        )
        self.optimizer = (
            optax.adam(cfg.learning_rate) if energy_optimizer is None else energy_optimizer
        )
        checkpoint_every = cfg.checkpoint_every or cfg.steps_per_epoch
        self.chunk_size = chunk_size(cfg.steps_per_epoch, checkpoint_every)
        self.checkpoint_every = checkpoint_every
        self._global_moves = getattr(cfg.objective, "sampler", None) == "flowmc"
        self.mesh = training_mesh(mesh, cfg.devices, split_sizes(cfg, self.objective.num_walkers))
        chunk = functools.partial(
            train_chunk,
            objective=self.objective,
            optimizer=self.optimizer,
            batch_size=cfg.batch_size,
            ema_decay=cfg.ema_decay,
            num_steps=self.chunk_size,
            num_traced=MAX_TRACED_CHAINS,
            batch_sharding=split_leading_axis(self.mesh) if self.mesh.size > 1 else None,
        )
        self._program = MeshProgram(chunk, self.mesh, self.data)
        self._total_energy = jax.jit(lambda params, x: jax.vmap(self._tilted(params))(x))

    def _run_chunk(self, state: TrainState, frozen: bool) -> tuple[TrainState, Any]:
        if self._program.layout is None:  # a state given by the caller: layout of a new one
            self.init_state()
        return self._program(state, frozen)

    def _tilted(self, energy_params: Any) -> TiltedEnergy:
        return TiltedEnergy.from_parts(energy_params, self.energy_static, self.base_scale)

    def init_state(self) -> TrainState:
        """The state before the first step: the initial energy, walkers drawn from ρ.

        Returns:
            The initial state (the same for the same settings), on :attr:`mesh`: walkers
            split over its devices, the energy's parameters copied on each.
        """
        initial_walkers = getattr(self.initial_energy, "initial_walkers", None)
        shape = (self.objective.num_walkers, self.dim)
        if initial_walkers is None:
            walkers = self.base_scale * jax.random.normal(self._key_walkers, shape)
        else:  # an energy on a fitted flow starts as that flow: draw the walkers from it
            walkers = initial_walkers(self._key_walkers, shape[0])
        # Split before the objective is built on them: what derives from them stays split.
        walkers = put_on_mesh(walkers, split_leading_axis(self.mesh))
        params = put_on_mesh(self._initial_energy_params, replicated(self.mesh))
        state = TrainState(
            energy_params=params,
            average_params=params,
            opt_state=self.optimizer.init(params),
            objective_state=self.objective.init(self._key_objective, walkers, params),
            step=jnp.zeros((), jnp.int32),
            rng_key=self._key_train,
        )
        return self._program.fix_layout(strongly_typed(state))

    def model_params(self, state: TrainState) -> Any:
        """The trained model's energy parameters: the moving average, or the last iterate."""
        return state.average_params if self.config.ema_decay > 0 else state.energy_params

    def energy(self, state: TrainState) -> eqx.Module:
        """The trained energy module ``E_θ`` of a state (see :meth:`model_params`)."""
        return eqx.combine(self.model_params(state), self.energy_static)

    def tilted_energy(self, state: TrainState) -> TiltedEnergy:
        """The model's total energy of one point, ``E_θ(x) - log ρ(x)``, as a module."""
        return self._tilted(self.model_params(state))

    def total_energy_fn(self, state: TrainState) -> Callable[[jax.Array], jax.Array]:
        """``x (n, d) -> E_θ(x) - log ρ(x) (n,)``, the model's -log unnormalised density."""
        params = self.model_params(state)
        return lambda x: self._total_energy(params, jnp.asarray(x))

    def negatives(self, state: TrainState) -> jax.Array:
        """The objective's samples (the negatives) of a state, ``(n, dim)``, or ``None``.

        Split over several processes' devices, they are gathered into one NumPy array.
        """
        positions = self.objective.positions(state.objective_state)
        if positions is None or positions.is_fully_addressable:
            return positions
        return gather_to_host(positions)

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
        if self.negatives(state) is None:
            raise ValueError(
                f"expected an objective that keeps samples, got {self.objective.name!r}, "
                "which has none to continue"
            )
        paths = []
        for _ in range(-(-num_steps // self.chunk_size)):
            state, (_, traced) = self._run_chunk(state, True)
            paths.append(np.asarray(traced))
        return np.swapaxes(np.concatenate(paths), 0, 1)

    def flow(self, state: TrainState) -> AbstractDistribution | None:
        """The objective's flow, or ``None``."""
        return self.objective.get_flow(state.objective_state)

    def mode_weights(self, state: TrainState) -> np.ndarray | None:
        """Model weight of each true mode (or class) of the dataset, ``(k,)``, or ``None``.

        See :func:`~numpyro_ebm.training.validation.model_mode_weights`.
        """
        return model_mode_weights(
            self.dataset,
            self.total_energy_fn(state),
            self.negatives(state),
            self.preprocessing,
            self.config.grid_points,
        )

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
        to the history a dict with ``epoch``, ``step``, the epoch means of ``loss`` and of
        the objective's metrics (for ``pcd``: ``energy_gap``, ``accept_prob``, and with a
        flow ``flow_loss``, with global moves ``global_accept_prob`` and
        ``stranded_fraction``), ``mode_weights``
        (when the dataset's modes are known and the model's weights can be measured),
        ``negatives_rhat`` (persistent negatives' R̂,
        :mod:`~numpyro_ebm.training.validation`; a warning when they stop mixing),
        ``val_log_likelihood`` (raw units) with ``_stderr`` and ``val_importance_ess`` (every
        ``validate_every`` epochs, with validation data) and ``time_s``. The best
        validation's state is kept (``best_checkpoint/``); ``patience`` stops the run early.

        Args:
            state: Start from this state instead of :meth:`init_state`, with a new history
                (ignored when resuming: ``out_dir`` and ``resume`` continue a history too).
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
            ValueError: If ``resume`` lacks ``out_dir``, the saved settings differ, the run has
                done more than ``num_epochs``, or ``state`` is of another dimension or network.
            TypeError, NotADirectoryError: ``state`` is no ``TrainState``; ``out_dir`` a file.
        """
        positive_int("keep_checkpoints", keep_checkpoints, 1)
        cfg = self.config
        if num_epochs is not None:
            positive_int("num_epochs", num_epochs, 1)
            cfg = cfg.replace(num_epochs=num_epochs)
        time_start = time.perf_counter()
        if state is None:
            state = self.init_state()
        else:
            walkers_shape = (self.objective.num_walkers, self.dim)
            check_given_state(state, self.init_state(), walkers_shape)
        state, history, partial, paths, best_state = open_run(
            None if out_dir is None else Path(out_dir),
            state,
            self.settings(),
            self.settings(cfg.num_epochs),
            resume=resume,
        )
        step = int(state.step)
        if step % self.chunk_size:
            raise ValueError(
                f"expected a state whose step is a multiple of {self.chunk_size}, got {step}"
            )
        checkpoint_dir = None if out_dir is None else Path(out_dir) / CHECKPOINT_DIR
        timings = {"init_s": time.perf_counter() - time_start, "first_chunk_s": 0.0}

        total_steps = cfg.num_epochs * cfg.steps_per_epoch
        progress = EpochProgress(
            cfg.steps_per_epoch, cfg.num_epochs, history, partial, enabled=progress_bar
        )
        time_train, warned = time.perf_counter(), False
        while step < total_steps and not should_stop(history, cfg.patience):
            chunk_start = time.perf_counter()
            state, (metrics, traced) = self._run_chunk(state, False)
            metrics = jax.device_get(metrics)
            if self.objective.persistent and traced is not None:
                paths.append(np.asarray(traced))
            if timings["first_chunk_s"] == 0.0:
                timings["first_chunk_s"] = time.perf_counter() - chunk_start
            step += self.chunk_size
            if progress.add(step, metrics, self.chunk_size):
                entry = progress.end_epoch(step, epoch_extra(self, state, step, paths))
                paths = []
                message = mixing_message(entry, self._global_moves)
                if message is not None and not warned:
                    warned = True
                    warn_user(message, RuntimeWarning)
                if VALIDATION_KEY in entry and best_epoch(history) == entry["epoch"]:
                    best_state = state
                    if out_dir is not None:
                        save_training_checkpoint(
                            Path(out_dir) / BEST_CHECKPOINT_DIR, state, step, history, {}, 1
                        )
            if checkpoint_dir is not None and (
                step % self.checkpoint_every == 0
                or step == total_steps
                or should_stop(history, cfg.patience)
            ):
                save_training_checkpoint(
                    checkpoint_dir, state, step, history, progress.partial, keep_checkpoints, paths
                )
        progress.close()
        timings["train_s"] = time.perf_counter() - time_train
        return TrainResult(
            energy=self.energy(state),
            flow=self.flow(state),
            state=state,
            best_state=best_state,
            history=history,
            timings=timings,
            trainer=self,
        )

    def settings(self, num_epochs: int | None = None) -> dict[str, Any]:
        """The JSON settings: config, dataset, dimension, devices, σ and the energy's spec.

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
            "num_devices": self.mesh.size,
            "base_scale": self.base_scale,
            "preprocessing": self.preprocessing.to_dict(),
            "energy": energy_spec(eqx.combine(self._initial_energy_params, self.energy_static)),
            "config": config,
        }
