"""Which energy network a training run uses, and the JSON spec that rebuilds a saved one.

The training setting ``energy`` names a built-in network (``"mlp"``, ``"conv"``), or
``"custom"`` for a module of the user's passed as ``Trainer(energy=...)``
(:func:`training_energy`). A trained energy is saved as its arrays plus a JSON *spec*
(:func:`energy_spec`) from which the module is rebuilt without pickle
(:func:`energy_from_spec`): ``{"type": "mlp", "width", "depth"}``, ``{"type": "conv",
"image_shape", "channels"}``, or ``{"type": "custom", "class", "num_parameters"}`` for a module
of the user's, which is rebuilt from a template of the same structure that the caller passes.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax

from numpyro_ebm._checks import positive_int
from numpyro_ebm.energies import MLPEnergy, _silu
from numpyro_ebm.networks import ConvEnergy, _positive_ints, check_energy

__all__ = [
    "ENERGY_NAMES",
    "build_energy",
    "check_energy_spec",
    "energy_from_spec",
    "energy_spec",
    "square_image_shape",
    "training_energy",
]

#: Names of the training setting ``energy``: the built-in networks, and ``"custom"`` for a
#: module passed to the trainer.
ENERGY_NAMES = ("mlp", "conv", "custom")


def square_image_shape(dim: int) -> tuple[int, int]:
    """``(h, h)`` with ``h² = dim``: the image shape the ``conv`` training setting assumes.

    Args:
        dim: Dimension of the data.

    Returns:
        The square image shape.

    Raises:
        ValueError: If ``dim`` is not a perfect square.

    Example:
        >>> square_image_shape(64)
        (8, 8)
    """
    side = math.isqrt(positive_int("dim", dim))
    if side * side != dim:
        raise ValueError(
            f"expected data of square images (d = h², e.g. 64 for 8×8 digits) for the 'conv' "
            f"energy, got d = {dim}; pass ConvEnergy(image_shape, key=...) as `energy=` instead"
        )
    return side, side


def build_energy(name: str, dim: int, *, width: int, depth: int, key: jax.Array) -> eqx.Module:
    """The built-in energy network a training setting ``energy`` names.

    Args:
        name: ``"mlp"`` (an :class:`~numpyro_ebm.energies.MLPEnergy` of ``width`` and
            ``depth``) or ``"conv"`` (a :class:`ConvEnergy` of square images, default channels).
        dim: Dimension of a point.
        width: Hidden units per layer of the MLP.
        depth: Hidden layers of the MLP.
        key: PRNG key of the initialisation.

    Returns:
        The energy module.

    Raises:
        ValueError: For ``"custom"`` (the module must be given) or an unknown name.

    Example:
        >>> import jax
        >>> build_energy("conv", 16, width=8, depth=1, key=jax.random.key(0)).image_shape
        (4, 4)
    """
    if name == "mlp":
        return MLPEnergy(dim, width=width, depth=depth, key=key)
    if name == "conv":
        return ConvEnergy(square_image_shape(dim), key=key)
    if name == "custom":
        raise ValueError(
            "expected the energy module as `energy=` for the energy setting 'custom' (a run "
            "trained with a network of your own resumes from Python only: Trainer(data, config, "
            "energy=<a module of the same structure>)), got none"
        )
    raise ValueError(f"expected `energy` among {ENERGY_NAMES}, got {name!r}")


def training_energy(
    energy: eqx.Module | None, config: Any, dim: int, *, key: jax.Array
) -> tuple[eqx.Module, Any]:
    """The energy a training run starts from, and its settings recording which it is.

    Args:
        energy: The user's own module, or ``None`` for the network ``config.energy`` names.
        config: The run's :class:`~numpyro_ebm.training.TrainConfig`.
        dim: Dimension of the data.
        key: PRNG key of a built-in network's initialisation.

    Returns:
        The energy (the user's, checked by :func:`check_energy`, or a new built-in one), and
        ``config``, naming the built-in setting that rebuilds the user's module where one does
        (so the command line can resume and sample the run), else ``energy="custom"``.

    Example:
        >>> import jax
        >>> from numpyro_ebm.training import TrainConfig
        >>> mine = ConvEnergy((2, 2), channels=(4,), key=jax.random.key(0))
        >>> training_energy(mine, TrainConfig(), 4, key=jax.random.key(1))[1].energy
        'custom'
        >>> mine = MLPEnergy(4, width=16, depth=1, key=jax.random.key(0))
        >>> config = training_energy(mine, TrainConfig(), 4, key=jax.random.key(1))[1]
        >>> config.energy, config.energy_width, config.energy_depth
        ('mlp', 16, 1)
    """
    if energy is None:
        return _built_in(config, dim, key), config
    return check_energy(energy, dim), _setting_rebuilding(energy, config, dim)


def _built_in(config: Any, dim: int, key: jax.Array) -> eqx.Module:
    width, depth = config.energy_width, config.energy_depth
    return build_energy(config.energy, dim, width=width, depth=depth, key=key)


def _setting_rebuilding(energy: eqx.Module, config: Any, dim: int) -> Any:
    """``config`` with the built-in energy setting of ``energy``'s structure, else "custom"."""
    spec = energy_spec(energy)
    if spec["type"] == "mlp":
        candidate = config.replace(
            energy="mlp", energy_width=spec["width"], energy_depth=spec["depth"]
        )
    elif spec["type"] == "conv":
        candidate = config.replace(energy="conv")  # square images, default channels
    else:
        return config.replace(energy="custom")
    built = eqx.filter_eval_shape(_built_in, candidate, dim, jax.random.key(0))
    return candidate if energy_spec(built) == spec else config.replace(energy="custom")


def _num_parameters(energy: eqx.Module) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(eqx.filter(energy, eqx.is_inexact_array)))


def energy_spec(energy: eqx.Module) -> dict[str, Any]:
    """The JSON spec from which :func:`energy_from_spec` rebuilds ``energy``'s structure.

    Args:
        energy: An energy module.

    Returns:
        ``{"type": "mlp", "width", "depth"}`` for an :class:`~numpyro_ebm.energies.MLPEnergy`
        with its default activation, ``{"type": "conv", "image_shape", "channels"}`` for a
        :class:`ConvEnergy`, else ``{"type": "custom", "class": "module.QualName",
        "num_parameters"}``.

    Example:
        >>> import jax
        >>> energy_spec(ConvEnergy((8, 8), channels=(4,), key=jax.random.key(0)))
        {'type': 'conv', 'image_shape': [8, 8], 'channels': [4]}
    """
    if type(energy) is MLPEnergy and energy.mlp.activation is _silu:
        return {"type": "mlp", "width": energy.width, "depth": energy.depth}
    if type(energy) is ConvEnergy:
        return {
            "type": "conv",
            "image_shape": list(energy.image_shape),
            "channels": list(energy.channels),
        }
    cls = type(energy)
    return {
        "type": "custom",
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "num_parameters": _num_parameters(energy),
    }


def check_energy_spec(spec: Any) -> dict[str, Any]:
    """Check a spec read from JSON (see :func:`energy_spec`).

    Args:
        spec: The candidate spec.

    Returns:
        ``spec``.

    Raises:
        ValueError: Naming the key that is missing or wrong.

    Example:
        >>> check_energy_spec({"type": "mlp", "width": 0, "depth": 2})
        Traceback (most recent call last):
        ...
        ValueError: `width` must be an integer >= 1, got 0.
    """
    if not isinstance(spec, dict) or spec.get("type") not in ENERGY_NAMES:
        raise ValueError(f"expected an object with 'type' among {ENERGY_NAMES}, got {spec!r}")
    keys = {
        "mlp": ("width", "depth"),
        "conv": ("image_shape", "channels"),
        "custom": ("class", "num_parameters"),
    }[spec["type"]]
    for key in keys:
        if key not in spec:
            raise ValueError(f"missing key {key!r} of a {spec['type']!r} energy in {spec!r}")
    if spec["type"] == "conv":
        _positive_ints("image_shape", spec["image_shape"], (2, 3))
        _positive_ints("channels", spec["channels"], (0,))
    elif spec["type"] == "custom" and not isinstance(spec["class"], str):
        raise ValueError(f"`class` must be a string, got {spec['class']!r}")
    for key in {"width", "depth", "num_parameters"} & set(keys):
        positive_int(key, spec[key])
    return spec


def _same_structure(saved: dict[str, Any], given: dict[str, Any]) -> bool:
    """Whether two specs record the same structure.

    A class defined in a script run directly is saved as ``__main__.Name``; imported by
    another script it is ``script.Name``: the same class, matched by its qualified name.

    Example:
        >>> spec = {"type": "custom", "class": "__main__.RBF", "num_parameters": 9}
        >>> _same_structure(spec, spec | {"class": "rbf.RBF"})
        True
        >>> _same_structure(spec, spec | {"class": "rbf.Other"})
        False
    """
    if saved.get("type") != "custom" or given.get("type") != "custom":
        return saved == given
    names = sorted((saved["class"], given["class"]), key=lambda name: name.startswith("__main__."))
    other, main = names  # `main` is the one of a script, if either is
    same_class = other == main or (
        main.startswith("__main__.") and other.endswith(main.removeprefix("__main__"))
    )
    return same_class and saved["num_parameters"] == given["num_parameters"]


def energy_from_spec(
    spec: dict[str, Any], dim: int, *, template: eqx.Module | None = None
) -> eqx.Module:
    """A module of the structure ``spec`` records, whose arrays saved ones can replace.

    Args:
        spec: A spec of :func:`energy_spec`.
        dim: Dimension of a point.
        template: A module of the same structure (e.g. a freshly initialised one): required for
            a custom energy, checked against ``spec`` and returned.

    Returns:
        The module (built-ins with arbitrary weights).

    Raises:
        ValueError: If the spec is invalid, a custom energy has no template, or the template
            does not match the spec.

    Example:
        >>> energy_from_spec({"type": "conv", "image_shape": [8, 8], "channels": [4]}, 64).dim
        64
    """
    spec = check_energy_spec(spec)
    if template is not None:
        template = check_energy(template, dim)
        given = energy_spec(template)
        if not _same_structure(spec, given):
            raise ValueError(
                f"expected an energy template of the saved structure {spec}, got {given}"
            )
        return template
    key = jax.random.key(0)
    if spec["type"] == "mlp":
        return MLPEnergy(dim, width=spec["width"], depth=spec["depth"], key=key)
    if spec["type"] == "conv":
        energy = ConvEnergy(tuple(spec["image_shape"]), channels=tuple(spec["channels"]), key=key)
        if energy.dim != dim:
            raise ValueError(
                f"expected a conv image_shape of {dim} pixels, got {spec['image_shape']} "
                f"({energy.dim} pixels)"
            )
        return energy
    raise ValueError(
        f"expected `energy=`, a template of the saved custom energy {spec['class']} (e.g. a "
        "freshly initialised instance; its arrays are replaced by the saved ones), got none"
    )
