"""Reading a run directory's files, each checked, with errors that name the file.

A failed command must never change a run directory, so ``numpyro-ebm train --resume`` and
``numpyro-ebm sample`` read and check every file they need before writing anything. A file that
is missing, not valid JSON, or lacks a key or has one of the wrong type raises an error whose
message is ``<file>: <what is wrong>`` (``FileNotFoundError`` for a missing file, ``ValueError``
otherwise); the command line prints it after ``error:`` and exits with status 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from numpyro_ebm.training.checkpoint import read_json

__all__ = [
    "read_checkpoint_meta",
    "read_json_object",
    "read_model_settings",
    "read_negatives",
    "read_run_settings",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: What a key may hold, by the words the error message uses.
_KINDS: dict[str, Callable[[Any], bool]] = {
    "a positive integer": lambda value: _is_int(value) and value >= 1,
    "a non-negative integer": lambda value: _is_int(value) and value >= 0,
    "a positive finite number": lambda value: (
        _is_number(value) and math.isfinite(value) and value > 0
    ),
    "true or false": lambda value: isinstance(value, bool),
    "a string": lambda value: isinstance(value, str),
    "an object": lambda value: isinstance(value, dict),
    "a list": lambda value: isinstance(value, list),
}


def read_json_object(path: str | os.PathLike, fields: Mapping[str, str]) -> dict[str, Any]:
    """Read a JSON object and check that it has ``fields``, each of the kind named.

    Args:
        path: File to read.
        fields: Key -> kind, one of ``"a positive integer"``, ``"a non-negative integer"``,
            ``"a positive finite number"``, ``"true or false"``, ``"a string"``,
            ``"an object"``, ``"a list"``. Other keys are allowed.

    Returns:
        The object.

    Raises:
        FileNotFoundError: If there is no file.
        ValueError: ``<file>: <what is wrong>`` if it is not JSON, not an object, or a key is
            missing or of another kind.

    Example:
        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "model.json"
        >>> _ = path.write_text(json.dumps({"dim": "two"}))
        >>> read_json_object(path, {"dim": "a positive integer"})
        Traceback (most recent call last):
        ...
        ValueError: .../model.json: key 'dim' must be a positive integer, got 'two'
    """
    content = read_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(content).__name__}")
    for key, kind in fields.items():
        if key not in content:
            raise ValueError(f"{path}: missing key {key!r} ({kind})")
        if not _KINDS[kind](content[key]):
            raise ValueError(f"{path}: key {key!r} must be {kind}, got {content[key]!r}")
    return content


def read_run_settings(path: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """Read a run's ``settings.json`` (written by :meth:`Trainer.fit`).

    Args:
        path: The file.

    Returns:
        The settings and their :class:`~numpyro_ebm.training.TrainConfig`.

    Raises:
        FileNotFoundError: If there is no file.
        ValueError: ``<file>: <what is wrong>``, including invalid settings.
    """
    from numpyro_ebm.training.config import TrainConfig

    settings = read_json_object(path, {"dataset": "a string", "config": "an object"})
    try:
        config = TrainConfig.from_dict(settings["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: key 'config': {error}") from error
    return settings, config


def read_model_settings(path: str | os.PathLike) -> dict[str, Any]:
    """Read a trained model's ``model.json`` (written by ``save_model``).

    Args:
        path: The file.

    Returns:
        The settings, with the energy network's spec under ``"energy"`` (see
        :mod:`~numpyro_ebm.training.energy_specs`); a file of an earlier release, with
        ``energy_width`` and ``energy_depth`` instead, gets ``{"type": "mlp", ...}``.

    Raises:
        FileNotFoundError: If there is no file.
        ValueError: ``<file>: <what is wrong>``.
    """
    from numpyro_ebm.training.energy_specs import check_energy_spec

    fields = {"dim": "a positive integer", "base_scale": "a positive finite number"}
    settings = read_json_object(path, {**fields, "has_flow": "true or false"})
    if "energy" not in settings:  # written before energy specs: always an MLP
        legacy = read_json_object(
            path, {"energy_width": "a positive integer", "energy_depth": "a positive integer"}
        )
        width, depth = legacy["energy_width"], legacy["energy_depth"]
        settings["energy"] = {"type": "mlp", "width": width, "depth": depth}
    try:
        check_energy_spec(settings["energy"])
    except ValueError as error:
        raise ValueError(f"{path}: key 'energy': {error}") from error
    return settings


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read the JSON that goes with a training checkpoint (step, history, partial epoch).

    Args:
        path: The file.

    Returns:
        Its content.

    Raises:
        FileNotFoundError: If there is no file.
        ValueError: ``<file>: <what is wrong>``.
    """
    meta = read_json_object(
        path,
        {"step": "a non-negative integer", "history": "a list", "partial_epoch": "an object"},
    )
    for index, entry in enumerate(meta["history"]):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: history[{index}] must be an object, got {entry!r}")
    for name, values in meta["partial_epoch"].items():
        if not isinstance(values, list) or not all(_is_number(value) for value in values):
            raise ValueError(
                f"{path}: partial_epoch[{name!r}] must be a list of numbers, got {values!r}"
            )
    return meta


def read_negatives(path: str | os.PathLike, dim: int) -> np.ndarray:
    """Read the final walkers ``negatives.npy`` of a trained model.

    Args:
        path: The file.
        dim: The model's dimension.

    Returns:
        Finite positions of shape ``(n, dim)``, ``n >= 1``.

    Raises:
        FileNotFoundError: If there is no file.
        ValueError: ``<file>: <what is wrong>``.
    """
    path = Path(path)
    negatives = _read_numbers(path)
    if negatives.ndim != 2 or negatives.shape[1] != dim or not len(negatives):
        raise ValueError(
            f"{path}: expected an array of shape (n, {dim}) with n >= 1, "
            f"got shape {negatives.shape}"
        )
    if not np.isfinite(negatives).all():
        raise ValueError(f"{path}: expected finite positions, got NaN or infinite values")
    return negatives


def read_traced_paths(path: str | os.PathLike, dim: int) -> np.ndarray:
    """Read the traced negatives of an unfinished epoch kept with a checkpoint.

    Args:
        path: The file (``step_<n>.paths.npy``).
        dim: The model's dimension.

    Returns:
        Positions of shape ``(steps, walkers, dim)`` (not necessarily finite: a diverged
        walker is what their R̂ reports).

    Raises:
        FileNotFoundError: If there is no file.
        ValueError: ``<file>: <what is wrong>``.
    """
    path = Path(path)
    paths = _read_numbers(path)
    if paths.ndim != 3 or paths.shape[2] != dim:
        raise ValueError(
            f"{path}: expected an array of shape (steps, walkers, {dim}), got shape {paths.shape}"
        )
    return paths


def _read_numbers(path: Path) -> np.ndarray:
    """A ``.npy`` array of numbers (no pickle), or ``ValueError('<file>: ...')``."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy array ({error})") from error
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: expected an array of numbers, got {type(array).__name__}")
    return array
