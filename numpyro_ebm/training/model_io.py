"""Saving and loading trained models: ``model.eqx`` (arrays) and ``model.json`` (structure).

A run directory written by :func:`save_model` holds

- ``model.json``: dimension, σ of the tilt, the energy network's spec (``"energy"``, see
  :mod:`~numpyro_ebm.training.energy_specs`), whether a flow was trained and which flow it
  started from (``"flow"``);
- ``model.eqx``: the energy's arrays and the flow's trainable arrays, written with equinox
  serialisation (``.npy`` records, no pickle);
- ``negatives.npy``: the final persistent walkers, used to start sampling.

:func:`load_energy` gives back the model's total energy ``E_θ(x) - log ρ(x)``. A built-in energy
network is rebuilt from its spec; a network of the user's is rebuilt from a template module of
the same structure passed as ``energy=``, whose arrays are replaced by the saved ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flowjax.distributions import AbstractDistribution

from numpyro_ebm.energies import TiltedEnergy
from numpyro_ebm.flows import default_flow, merge_flow, split_flow
from numpyro_ebm.networks import check_energy
from numpyro_ebm.preprocessing import Preprocessing
from numpyro_ebm.training.checkpoint import load_checkpoint, save_checkpoint, write_json
from numpyro_ebm.training.energy_specs import energy_from_spec, energy_spec
from numpyro_ebm.training.run_files import read_model_settings, read_negatives
from numpyro_ebm.training.step import TrainResult

__all__ = [
    "TotalEnergy",
    "TrainedModel",
    "load_energy",
    "load_model",
    "save_model",
    "save_result",
    "saved_preprocessing",
]

MODEL_FILE = "model.eqx"
MODEL_SETTINGS_FILE = "model.json"
NEGATIVES_FILE = "negatives.npy"


class TrainedModel(NamedTuple):
    """A trained tilted EBM read back from a run directory.

    Attributes:
        energy: The energy module ``E_θ``.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        flow: The trained flow, or ``None`` if the sampler had none.
        negatives: The final walkers ``(num_walkers, dim)``, or ``None`` if not saved.
        settings: The contents of ``model.json``.
    """

    energy: eqx.Module
    base_scale: float
    flow: AbstractDistribution | None
    negatives: np.ndarray | None
    settings: dict[str, Any]


def _flow_templates(energy: eqx.Module, dim: int, base_scale: float) -> dict[str, Any]:
    """The flows a trained flow can have started from, by the name ``model.json`` records.

    ``"energy"``: the energy's own start (a :class:`~numpyro_ebm.flow_base.FlowBaseEnergy`'s
    ``initial_flow()``, which the flow-assisted sampler fits from); ``"default"``:
    :func:`~numpyro_ebm.flows.default_flow` started as ρ.
    """
    templates = {}
    if callable(getattr(energy, "initial_flow", None)):
        templates["energy"] = lambda: energy.initial_flow()
    templates["default"] = lambda: default_flow(jax.random.key(0), dim, loc=0.0, scale=base_scale)
    return templates


def _array_layout(flow: AbstractDistribution) -> list[tuple[str, tuple[int, ...]]]:
    """Each trainable array's path and shape (dtypes may differ: loading casts floats)."""
    leaves = jax.tree_util.tree_leaves_with_path(split_flow(flow)[0])
    return [(jax.tree_util.keystr(path), leaf.shape) for path, leaf in leaves]


def _flow_source(flow: AbstractDistribution, energy: eqx.Module, dim: int, base: float) -> str:
    layout = _array_layout(flow)
    templates = _flow_templates(energy, dim, base)
    for name, template in templates.items():
        if _array_layout(template()) == layout:
            return name
    raise ValueError(
        "expected `flow` to be a fitted copy of the flow training starts from ("
        + " or ".join(
            {"energy": "the energy's initial_flow()", "default": "default_flow"}[name]
            for name in templates
        )
        + f"), which a saved model is loaded into; got a {type(flow).__name__} of other arrays"
    )


def _templates(settings: dict[str, Any], energy: eqx.Module | None) -> tuple[eqx.Module, Any, Any]:
    dim = int(settings["dim"])
    energy = energy_from_spec(settings["energy"], dim, template=energy)
    flow_params, flow_static = (None, None)
    if settings["has_flow"]:
        templates = _flow_templates(energy, dim, float(settings["base_scale"]))
        source = settings.get("flow", "default")  # earlier releases: the default flow only
        if not isinstance(source, str) or source not in templates:
            raise ValueError(
                f"key 'flow': expected one of {sorted(templates)} for an energy of type "
                f"{type(energy).__name__}, got {source!r}"
            )
        flow_params, flow_static = split_flow(templates[source]())
    return energy, flow_params, flow_static


def save_model(
    out_dir: str | os.PathLike,
    energy: eqx.Module,
    base_scale: float,
    *,
    flow: AbstractDistribution | None = None,
    negatives: jax.Array | None = None,
    preprocessing: Preprocessing | None = None,
    extra: dict[str, Any] | None = None,
    dim: int | None = None,
) -> Path:
    """Write a trained model to ``out_dir`` (:func:`save_result` writes a training result's).

    Args:
        out_dir: Run directory (created if needed).
        energy: The trained energy: an :class:`~numpyro_ebm.energies.MLPEnergy`, a
            :class:`~numpyro_ebm.networks.ConvEnergy` or any module that
            :func:`~numpyro_ebm.networks.check_energy` accepts.
        base_scale: σ of the tilt.
        flow: The trained flow, or ``None``: a fitted copy of the default flow
            (:func:`~numpyro_ebm.flows.default_flow` started at ``loc=0,
            scale=base_scale``) or of the energy's ``initial_flow()`` (a
            :class:`~numpyro_ebm.flow_base.FlowBaseEnergy`'s), which ``model.json`` records
            as ``"flow": "default"`` or ``"energy"`` for loading.
        negatives: Final walkers to store, or ``None``.
        preprocessing: The map from raw data to the model's coordinates
            (``trainer.preprocessing``); ``None`` for a model of the raw data itself. Without
            it, :func:`load_energy` of a model trained on standardised data is wrong.
        extra: More JSON-serialisable entries for ``model.json``.
        dim: Dimension of a point; by default ``energy.dim``, else that of ``negatives``.

    Returns:
        The directory.

    Raises:
        TypeError, ValueError: If ``energy`` is not an energy module of points of ``dim``
            (see :func:`~numpyro_ebm.networks.check_energy`), or ``dim`` is unknown.

    Example:
        >>> import tempfile, jax, jax.numpy as jnp
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
        >>> out = save_model(tempfile.mkdtemp(), energy, 1.0)
        >>> load_energy(out)(jnp.zeros((3, 2))).shape
        (3,)
    """
    if dim is None:
        dim = getattr(energy, "dim", None)
    if dim is None and negatives is not None:
        dim = int(np.shape(negatives)[-1])
    if dim is None:
        raise ValueError(
            f"expected `dim` for an energy without a `dim` attribute, got {type(energy).__name__} "
            "and neither `dim` nor `negatives`"
        )
    energy = check_energy(energy, dim)
    if preprocessing is None:
        preprocessing = Preprocessing.identity(dim)
    if preprocessing.dim != dim:
        raise ValueError(
            f"expected a preprocessing of points of dimension {dim}, got one of dimension "
            f"{preprocessing.dim}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "dim": int(dim),
        "base_scale": float(base_scale),
        "energy": energy_spec(energy),
        "has_flow": flow is not None,
        **({} if flow is None else {"flow": _flow_source(flow, energy, dim, base_scale)}),
        "preprocessing": preprocessing.to_dict(),
        **(extra or {}),
    }
    arrays = {
        "energy": eqx.filter(energy, eqx.is_array),
        "flow": None if flow is None else split_flow(flow)[0],
    }
    save_checkpoint(out_dir / MODEL_FILE, arrays)
    if negatives is not None:
        np.save(out_dir / NEGATIVES_FILE, np.asarray(negatives), allow_pickle=False)
    write_json(out_dir / MODEL_SETTINGS_FILE, settings)
    return out_dir


def save_result(out_dir: str | os.PathLike, result: TrainResult) -> Path:
    """Write the model of a training result to ``out_dir``, as ``numpyro-ebm train`` does.

    Everything :func:`load_energy` and :func:`~numpyro_ebm.training.sample_run` need goes
    with it: the energy, σ, the flow, the final walkers, the preprocessing of the data, the
    dataset's name and the objective's settings.

    Args:
        out_dir: Run directory (created if needed).
        result: What :meth:`~numpyro_ebm.training.Trainer.fit` returned (its ``state``,
            ``energy`` and ``flow`` are saved: replace them to save another state's).

    Returns:
        The directory.

    Example:
        >>> import tempfile, numpy as np
        >>> from numpyro_ebm.training import TrainConfig, train
        >>> config = TrainConfig("dsm", num_epochs=1, steps_per_epoch=2, batch_size=8,
        ...                      energy_width=4, energy_depth=1)
        >>> points = np.random.default_rng(0).normal(1e3, 5.0, size=(64, 2))  # raw units
        >>> out = save_result(tempfile.mkdtemp(), train(points, config, progress_bar=False))
        >>> load_energy(out)(points[:3]).shape
        (3,)
    """
    trainer = result.trainer
    return save_model(
        out_dir,
        result.energy,
        trainer.base_scale,
        flow=result.flow,
        negatives=trainer.negatives(result.state),
        preprocessing=trainer.preprocessing,
        extra={"dataset": trainer.dataset_spec, "objective": trainer.config.objective.to_dict()},
        dim=trainer.dim,
    )


def load_model(out_dir: str | os.PathLike, energy: eqx.Module | None = None) -> TrainedModel:
    """Read a model written by :func:`save_model` (e.g. by ``numpyro-ebm train``).

    Args:
        out_dir: Run directory.
        energy: For an energy network of your own (``"type": "custom"`` in ``model.json``): a
            module of the same structure, e.g. a freshly initialised instance, whose arrays are
            replaced by the saved ones. Built-in networks are rebuilt without it.

    Returns:
        The trained model.

    Raises:
        FileNotFoundError: If ``out_dir`` holds no trained model.
        ValueError: ``<file>: <what is wrong>`` if one of its files is damaged (see
            :mod:`~numpyro_ebm.training.run_files`), or if a custom energy has no template or
            a template of another structure.

    Example:
        >>> import tempfile, jax
        >>> from numpyro_ebm.networks import ConvEnergy
        >>> out = save_model(tempfile.mkdtemp(), ConvEnergy((4, 4), key=jax.random.key(0)), 1.0)
        >>> load_model(out).settings["energy"]
        {'type': 'conv', 'image_shape': [4, 4], 'channels': [16, 32]}
    """
    out_dir = Path(out_dir)
    settings_path = out_dir / MODEL_SETTINGS_FILE
    if not settings_path.exists():
        raise FileNotFoundError(
            f"expected a trained model ({MODEL_SETTINGS_FILE} and {MODEL_FILE}) in "
            f"{str(out_dir)!r}, found none: train one with `numpyro-ebm train DATA --out DIR`"
        )
    settings = read_model_settings(settings_path)
    try:
        energy, flow_params, flow_static = _templates(settings, energy)
        _check_preprocessing(settings)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{settings_path}: {error}") from error
    energy_params, energy_static = eqx.partition(energy, eqx.is_array)
    # Built at JAX's default float type: a float32 model loads under x64 and vice versa.
    templates = {"energy": energy_params, "flow": flow_params}
    arrays = load_checkpoint(out_dir / MODEL_FILE, templates, cast_floats=True)
    flow = None if flow_static is None else merge_flow(arrays["flow"], flow_static)
    negatives_path = out_dir / NEGATIVES_FILE
    negatives = (
        read_negatives(negatives_path, int(settings["dim"])) if negatives_path.exists() else None
    )
    return TrainedModel(
        energy=eqx.combine(arrays["energy"], energy_static),
        base_scale=float(settings["base_scale"]),
        flow=flow,
        negatives=negatives,
        settings=settings,
    )


def load_energy(out_dir: str | os.PathLike, energy: eqx.Module | None = None) -> TotalEnergy:
    """The trained model's total energy ``x ↦ E_θ(z) - log ρ(z) - log |∂z/∂x|``, batched.

    This is the model's -log unnormalised density (the tilted EBM of [A, Eq. 6]) of raw points
    ``x``, in the units of the data the run was trained on: ``z`` is ``x`` mapped by the run's
    preprocessing (standardisation; no dequantisation noise is added), and the constant
    Jacobian term makes ``exp(-energy)`` a density on raw units (its integral is the same Z).
    Concrete points are standardised in float64 (raw units may be large and finely resolved);
    traced ones, as inside a jitted function or a NumPyro model, in their own dtype.

    Args:
        out_dir: Run directory of ``numpyro-ebm train`` (or of :func:`save_model`).
        energy: A template of a custom energy network (see :func:`load_model`).

    Returns:
        A callable :class:`TotalEnergy` from ``x`` of shape ``(n, d)`` to energies of shape
        ``(n,)``, and from one point ``(d,)`` to a scalar: a learned prior in raw units for
        :func:`~numpyro_ebm.energies.energy_factor` inside a NumPyro model. It pickles, and
        so does an ``MCMC`` of a model that uses it.

    Raises:
        FileNotFoundError: If ``out_dir`` holds no trained model.

    Example:
        >>> import tempfile, jax, jax.numpy as jnp
        >>> from numpyro_ebm.energies import MLPEnergy, base_log_prob
        >>> out = save_model(tempfile.mkdtemp(), MLPEnergy(2, key=jax.random.key(0)), 2.0)
        >>> x = jnp.ones((1, 2))
        >>> bool(jnp.allclose(load_energy(out)(x), -base_log_prob(x, 2.0)))  # E ≡ 0 at start
        True
    """
    model = load_model(out_dir, energy)
    tilted = TiltedEnergy(model.energy, model.base_scale)
    return TotalEnergy(tilted, saved_preprocessing(model.settings), int(model.settings["dim"]))


class TotalEnergy:
    """A trained model's total energy in raw units, as :func:`load_energy` returns it.

    A plain object of arrays (no closure), so a NumPyro model that uses it, and an ``MCMC``
    of that model, can be pickled.

    Args:
        tilted: The tilted EBM on standardised coordinates.
        preprocessing: The map from raw units to those coordinates.
        dim: Dimension of a point.
    """

    def __init__(self, tilted: TiltedEnergy, preprocessing: Preprocessing, dim: int):
        self.tilted = tilted
        self.preprocessing = preprocessing
        self.dim = dim
        self._batched = jax.jit(jax.vmap(tilted))

    def __getstate__(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if name != "_batched"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Energies of points ``(n, d)``, or the energy of one point ``(d,)``."""
        if not isinstance(x, jax.core.Tracer):  # concrete points: standardise in float64,
            x = np.asarray(x, dtype=np.float64)  # raw units may be large and finely resolved
        if x.ndim not in (1, 2) or x.shape[-1] != self.dim:
            raise ValueError(
                f"expected a point of shape ({self.dim},) or points of shape (n, {self.dim}), "
                f"got shape {x.shape}"
            )
        prep = self.preprocessing
        z = jnp.asarray((x - prep.shift) / prep.scale)
        energies = self._batched(jnp.atleast_2d(z)) - prep.log_det_jacobian
        return energies if x.ndim == 2 else energies[0]


def _check_preprocessing(settings: dict[str, Any]) -> None:
    """Raise if the saved preprocessing is damaged or of another dimension than the model."""
    dim = int(settings["dim"])
    prep = saved_preprocessing(settings)
    if prep.dim != dim:
        raise ValueError(f"expected a preprocessing of dimension {dim}, got {prep.dim}")


def saved_preprocessing(settings: dict[str, Any]) -> Preprocessing:
    """A run's preprocessing from its ``model.json`` settings (identity for older runs).

    Example:
        >>> saved_preprocessing({"dim": 2}).is_identity
        True
    """
    record = settings.get("preprocessing")
    if record is None:  # written before preprocessing existed: trained on the data as given
        return Preprocessing.identity(int(settings["dim"]))
    return Preprocessing.from_dict(record)
