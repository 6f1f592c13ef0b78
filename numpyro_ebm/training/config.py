"""Settings of a training run: what every objective shares, and one objective's own settings."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from numpyro_ebm._checks import positive_float, positive_int, seed_value, store_python_scalars
from numpyro_ebm.preprocessing import PREPROCESS_CHOICES
from numpyro_ebm.training.energy_specs import ENERGY_NAMES
from numpyro_ebm.training.objectives import PCD, ObjectiveSettings, objective_settings

__all__ = ["HIGH_DIMENSION_SETTINGS", "TrainConfig"]

#: What :meth:`TrainConfig.for_dimension` changes for data of dimension d > 2: the settings of
#: notebook 04 and of ``benchmarks/paper.py``'s d = 16-64 runs. The 2-D defaults (512 walkers,
#: 32 i-SIR particles, 5 local steps) cost ~1 s a step at d = 64 on 2 CPU cores; these ~55 ms,
#: so 4000 steps on 64-d digits take ~4 min, and every bundled dataset trains within 10 min.
HIGH_DIMENSION_SETTINGS: dict[str, Any] = dict(
    num_epochs=20,
    batch_size=128,
    energy_width=128,
    num_walkers=128,
    fit_batch_size=128,
    num_particles=16,
    num_local_steps=3,
)

#: Settings of runs written before objectives existed, which now belong to ``pcd``.
_LEGACY_PCD_SETTINGS = ("sampler", *PCD.field_names())


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run. The defaults suit [A]'s 2-D experiments (METHOD.md §4).

    Attributes:
        objective: The training objective's settings (:mod:`~numpyro_ebm.training.objectives`),
            or its name for its defaults: ``"pcd"`` ([A]'s flow-assisted contrastive maximum
            likelihood, the default), ``"cd"``, ``"short-run"``, ``"coopflow"``, ``"nce"``,
            ``"dsm"`` or ``"ssm"``.
        num_epochs: Epochs to train.
        steps_per_epoch: EBM steps per epoch.
        batch_size: Data points per step (``x⁺``); [A] uses 64-256.
        learning_rate: Adam learning rate of the energy; [A] uses 1e-2 or 1e-3.
        ema_decay: Decay of the exponential moving average of the energy's parameters that
            is the trained model (Polyak averaging: it averages out the random walk that
            stochastic gradients give the relative mode weights); 0 keeps the last iterate.
        base_scale: σ of the tilt ρ = N(0, σ² I); ``None`` takes the root mean square of the
            training data's coordinates, so that ρ covers the data.
        energy: The energy network: ``"mlp"`` (an :class:`~numpyro_ebm.energies.MLPEnergy`),
            ``"conv"`` (a :class:`~numpyro_ebm.networks.ConvEnergy` of square images with its
            default channels) or ``"custom"`` (a module given as ``Trainer(energy=...)``).
        energy_width: Units per hidden layer of the ``"mlp"`` energy.
        energy_depth: Hidden layers of the ``"mlp"`` energy.
        num_data: Training points drawn from a built-in dataset (file data is used as given).
        preprocess: ``"auto"`` standardises data given by samples (files, real built-ins),
            dequantising integer-valued data first, and leaves built-ins with a known density
            as they are; ``"standardize"`` standardises without dequantising; ``"none"``
            trains on the data as given (:mod:`~numpyro_ebm.preprocessing`).
        validation_fraction: Share of file data held out for validation; ``None`` uses a
            dataset's own validation split, 0.1 of file data, and none for built-ins with a
            known density; 0 turns validation off.
        validate_every: Epochs between validations (held-out log-likelihood by importance
            sampling from the objective's flow, or from ρ without one).
        validation_samples: Importance draws per log Z estimate of a validation.
        patience: Stop after this many validations without a better held-out
            log-likelihood (early stopping); ``None`` trains every epoch.
        checkpoint_every: Steps between checkpoints when training into a directory; ``None``
            checkpoints at the end of every epoch.
        grid_points: Points per axis of the 2-D grid that integrates mode weights.
        seed: Seed of everything random in the run.
        devices: Devices the walkers and batches are split over (data parallelism,
            :mod:`~numpyro_ebm.training.mesh`); ``None`` takes as many of ``jax.devices()``
            (every process's, under ``jax.distributed``) as split ``num_walkers``,
            ``batch_size`` and ``fit_batch_size`` evenly. ``Trainer(mesh=...)`` takes a mesh
            of your own instead.

    Example:
        >>> from numpyro_ebm.training.objectives import PCD
        >>> config = TrainConfig(objective=PCD(sampler="ula"), num_epochs=3)
        >>> config.objective.name, config.with_settings(num_walkers=64).objective.num_walkers
        ('pcd', 64)
    """

    objective: ObjectiveSettings | str | dict = dataclasses.field(default_factory=PCD)
    num_epochs: int = 10
    steps_per_epoch: int = 200
    batch_size: int = 256
    learning_rate: float = 1e-3
    ema_decay: float = 0.995
    base_scale: float | None = None
    energy: str = "mlp"
    energy_width: int = 64
    energy_depth: int = 3
    num_data: int = 50_000
    preprocess: str = "auto"
    validation_fraction: float | None = None
    validate_every: int = 1
    validation_samples: int = 4096
    patience: int | None = None
    checkpoint_every: int | None = None
    grid_points: int = 100
    seed: int = 0
    devices: int | None = None

    def __post_init__(self):
        store_python_scalars(self)
        object.__setattr__(self, "objective", objective_settings(self.objective))
        for name in (
            "num_epochs",
            "steps_per_epoch",
            "batch_size",
            "energy_width",
            "energy_depth",
            "num_data",
            "validate_every",
        ):
            positive_int(name, getattr(self, name), 1)
        positive_int("validation_samples", self.validation_samples, 2)  # a log Z's std. error
        positive_int("grid_points", self.grid_points, 2)
        seed_value("seed", self.seed)
        if self.devices is not None:
            positive_int("devices", self.devices, 1)
        if self.preprocess not in PREPROCESS_CHOICES:
            raise ValueError(
                f"expected `preprocess` in {PREPROCESS_CHOICES}, got {self.preprocess!r}"
            )
        fraction = self.validation_fraction
        if fraction is not None and not (isinstance(fraction, int | float) and 0 <= fraction < 1):
            raise ValueError(f"expected `validation_fraction` in [0, 1) or None, got {fraction!r}")
        if self.patience is not None:
            positive_int("patience", self.patience, 1)
        if self.checkpoint_every is not None:
            positive_int("checkpoint_every", self.checkpoint_every, 1)
        positive_float("learning_rate", self.learning_rate)
        if self.base_scale is not None:
            positive_float("base_scale", self.base_scale)
        if self.energy not in ENERGY_NAMES:
            raise ValueError(f"expected `energy` among {ENERGY_NAMES}, got {self.energy!r}")
        if not (isinstance(self.ema_decay, int | float) and 0 <= self.ema_decay < 1):
            raise ValueError(f"expected `ema_decay` in [0, 1), got {self.ema_decay!r}")

    @classmethod
    def for_dimension(
        cls, dim: int, objective: ObjectiveSettings | str | dict = "pcd"
    ) -> TrainConfig:
        """The default settings for data of dimension ``dim``.

        Up to 2-D the class's defaults; above, with :data:`HIGH_DIMENSION_SETTINGS` (those the
        objective has). ``Trainer(dataset)`` and ``numpyro-ebm train`` start from these.

        Example:
            >>> TrainConfig.for_dimension(64).objective.num_walkers
            128
        """
        config = cls(objective=objective)
        if positive_int("dim", dim, 1) <= 2:
            return config
        return config.with_settings(strict=False, **HIGH_DIMENSION_SETTINGS)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the shared settings (``objective`` included)."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some shared settings (or the whole ``objective``) changed.

        Args:
            **changes: Settings to change.

        Returns:
            The new settings, validated again.
        """
        return dataclasses.replace(self, **changes)

    @classmethod
    def check(cls, config: Any) -> TrainConfig:
        """Return ``config`` if it is a :class:`TrainConfig`, else raise naming what was given.

        Example:
            >>> TrainConfig.check({"num_epochs": 1})
            Traceback (most recent call last):
            ...
            TypeError: expected a TrainConfig (e.g. ... got dict {'num_epochs': 1}
        """
        if not isinstance(config, cls):
            raise TypeError(
                "expected a TrainConfig (e.g. TrainConfig(num_epochs=1), or "
                f"TrainConfig.from_dict(settings) for a dict), got {type(config).__name__} "
                f"{config!r}"
            )
        return config

    def with_settings(self, *, strict: bool = True, **changes: Any) -> TrainConfig:
        """A copy with settings changed, each routed to the run or to its objective by name.

        Args:
            strict: Raise for a setting that neither has; otherwise skip it (for presets
                such as the command line's ``--fast`` that name several objectives' settings).
            **changes: Settings to change.

        Returns:
            The new settings.

        Raises:
            ValueError: For a setting that neither the run nor its objective has (``strict``).
                An ``objective`` changed in the same call is the one whose settings count.

        Warns:
            UserWarning: For a setting the objective holds but does not use (``strict``), such
                as ``num_particles`` with ``pcd``'s ``ula`` sampler.

        Example:
            >>> TrainConfig().with_settings(objective="dsm", noise_scale=0.3).objective.name
            'dsm'
        """
        shared = {k: v for k, v in changes.items() if k in self.field_names()}
        config = self.replace(**shared)
        own = {k: v for k, v in changes.items() if k in config.objective.field_names()}
        unknown = sorted(set(changes) - set(shared) - set(own))
        if unknown and strict:
            run_settings = sorted(set(self.field_names()) - {"objective"})
            raise ValueError(
                f"expected settings of the run (among {run_settings}) or of objective "
                f"{config.objective.name!r} (among {sorted(config.objective.field_names())}), "
                f"got {unknown}"
            )
        config = config.replace(objective=config.objective.replace(**own)) if own else config
        unused = config.objective.unused_settings(own) if strict else []
        if unused:
            sampler = getattr(config.objective, "sampler", None)
            warnings.warn(
                f"numpyro_ebm: {', '.join(unused)} set but not used by objective "
                f"{config.objective.name!r}"
                + (f" with sampler {sampler!r}" if sampler else "")
                + ": ignored (the objective's attributes say which sampler reads each)",
                UserWarning,
                stacklevel=2,
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict; the objective's under ``"objective"``."""
        settings = {name: getattr(self, name) for name in self.field_names()}
        settings["objective"] = self.objective.to_dict()
        return settings

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> TrainConfig:
        """Rebuild settings written by :meth:`to_dict` (or by a release before objectives).

        Args:
            settings: A dict of settings.

        Returns:
            The settings.

        Raises:
            ValueError: For an unknown setting.
            TypeError: If ``settings`` is not a dict.
        """
        if not isinstance(settings, dict):
            raise TypeError(
                f"expected a dict of settings, got {type(settings).__name__} {settings!r}"
            )
        settings = dict(settings)
        if "objective" not in settings and "sampler" in settings:
            # Written before objectives existed: its sampler settings are pcd's.
            legacy = {k: settings.pop(k) for k in _LEGACY_PCD_SETTINGS if k in settings}
            settings["objective"] = {"name": PCD.name, **legacy}
        unknown = sorted(set(settings) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"expected settings among {sorted(cls.field_names())}, got unknown {unknown}"
            )
        return cls(**settings)
