"""Checkpoints of training states: equinox serialisation of arrays, JSON for everything else.

A state is written with :func:`equinox.tree_serialise_leaves`, which stores each array leaf as a
``.npy`` record: no pickle, so loading a checkpoint never runs code. Typed PRNG keys are stored
as their raw ``uint32`` data (:func:`jax.random.key_data`) and wrapped back on loading, with the
key implementation of the template. Loading needs a template state of the same structure (the
trainer rebuilds it from the run's settings), as :func:`equinox.tree_deserialise_leaves` does.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from numpyro_ebm._checks import is_key_array
from numpyro_ebm.training.mesh import gather_to_host, is_main_process

__all__ = [
    "checkpoint_paths",
    "json_text",
    "latest_checkpoint",
    "load_checkpoint",
    "read_json",
    "save_checkpoint",
    "strongly_typed",
    "write_json",
]

_CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.eqx$")


def _keys_to_data(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key_array(x) else x, tree)


def _data_to_keys(tree: Any, like: Any) -> Any:
    def wrap(leaf, template):
        if is_key_array(template):
            return jax.random.wrap_key_data(leaf, impl=jax.random.key_impl(template))
        return leaf

    return jax.tree.map(wrap, tree, like)


def strongly_typed(tree: Any) -> Any:
    """Give weakly typed leaves (e.g. ``jnp.array(0)``) their strong dtype.

    A checkpoint stores dtypes, not weak types: without this a resumed state would not match
    the compiled training program and would be compiled again.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> jax.typeof(strongly_typed(jnp.array(0))).weak_type
        False
    """

    def strong(leaf):
        if isinstance(leaf, jax.Array) and jax.typeof(leaf).weak_type:
            return jnp.asarray(leaf, dtype=leaf.dtype)
        return leaf

    return jax.tree.map(strong, tree)


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary file and rename, so a killed run never leaves half a file.

    Only the main process writes: under ``jax.distributed`` every process runs the same code,
    and the run directory is written once.
    """
    if not is_main_process():
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # a failed or interrupted write leaves no debris
        if tmp.is_file():
            tmp.unlink()
        raise


def save_checkpoint(path: str | os.PathLike, tree: Any) -> Path:
    """Write the arrays of ``tree`` (PRNG keys included) to ``path`` without pickle.

    Arrays split over devices, or over several processes, are gathered and stored whole, so
    the file is the same whatever the device count and loads on any other.

    Args:
        path: File to write.
        tree: A pytree of arrays (e.g. a training state).

    Returns:
        The path written.

    Example:
        >>> import tempfile, jax, jax.numpy as jnp
        >>> path = Path(tempfile.mkdtemp()) / "state.eqx"
        >>> tree = {"w": jnp.ones(2), "key": jax.random.key(0)}
        >>> _ = save_checkpoint(path, tree)
        >>> loaded = load_checkpoint(path, tree)
        >>> bool((jax.random.key_data(loaded["key"]) == jax.random.key_data(tree["key"])).all())
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = gather_to_host(_keys_to_data(tree))  # split arrays, other processes' shards too
    _write_atomically(path, lambda tmp: eqx.tree_serialise_leaves(tmp, data))
    return path


def _as_template_float(file, like: Any) -> Any:
    value = eqx.default_deserialise_filter_spec(file, like)
    floats = (value, like) if isinstance(like, jax.Array) else ()
    if floats and all(jnp.issubdtype(x.dtype, jnp.floating) for x in floats):
        return value.astype(like.dtype)
    return value


def load_checkpoint(path: str | os.PathLike, like: Any, *, cast_floats: bool = False) -> Any:
    """Read a tree written by :func:`save_checkpoint` into the structure of ``like``.

    Args:
        path: File to read.
        like: A tree of the same structure, shapes and dtypes (values are ignored).
        cast_floats: Give stored floating-point arrays the dtype of ``like``'s, e.g. a model
            trained in float32 loaded under ``jax_enable_x64``. A training checkpoint is read
            without it: a run resumed in another precision would not continue as it began.

    Returns:
        The stored tree.

    Raises:
        FileNotFoundError: If there is no file at ``path``.
        ValueError: If the file does not match the structure of ``like``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected a checkpoint)")
    template = _keys_to_data(like)
    try:
        filter_spec = _as_template_float if cast_floats else eqx.default_deserialise_filter_spec
        data = eqx.tree_deserialise_leaves(path, template, filter_spec=filter_spec)
    except Exception as error:  # equinox raises a variety of errors on a mismatch
        raise ValueError(
            f"{path}: expected a checkpoint that fits the state built from the run's settings; "
            "it does not (other settings, a damaged file, another precision than "
            "jax_enable_x64's now, or one written by another release of numpyro_ebm, whose "
            f"state had other fields): {error}"
        ) from error
    return _data_to_keys(data, like)


def checkpoint_paths(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """Checkpoints ``step_<n>.eqx`` in ``directory``, as ``(step, path)`` sorted by step.

    Args:
        directory: Folder of checkpoints (may not exist).

    Returns:
        The checkpoints found.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _CHECKPOINT_PATTERN.match(path.name)
        if match and path.with_suffix(".json").exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> tuple[int, Path] | None:
    """The checkpoint with the most steps in ``directory``, or ``None``.

    Args:
        directory: Folder of checkpoints.

    Returns:
        ``(step, path)`` or ``None``.
    """
    found = checkpoint_paths(directory)
    return found[-1] if found else None


def _nonfinite_to_null(content: Any) -> Any:
    if isinstance(content, float) and not math.isfinite(content):
        return None
    if isinstance(content, dict):
        return {key: _nonfinite_to_null(value) for key, value in content.items()}
    if isinstance(content, list | tuple):
        return [_nonfinite_to_null(value) for value in content]
    return content


def json_text(content: Any, *, exact: bool = False) -> str:
    """``content`` as indented JSON text: strict JSON unless ``exact`` (see :func:`write_json`).

    Example:
        >>> print(json_text([1.5, float("inf")]))
        [
          1.5,
          null
        ]
    """
    if exact:
        return json.dumps(content, indent=2, allow_nan=True)
    return json.dumps(_nonfinite_to_null(content), indent=2, allow_nan=False)


def write_json(path: str | os.PathLike, content: Any, *, exact: bool = False) -> Path:
    """Write ``content`` as indented JSON, atomically.

    By default the file is strict JSON, which every parser reads (``jq``, JavaScript, R): a
    NaN or infinite number is written as ``null``. ``exact=True`` writes them as Python's
    ``json`` module does (``NaN``, ``Infinity``), for files only this package reads back, such
    as a checkpoint's history, which must resume to the same values.

    Args:
        path: File to write.
        content: JSON-serialisable object.
        exact: Keep non-finite numbers as ``NaN``/``Infinity`` instead of ``null``.

    Returns:
        The path written.

    Example:
        >>> import json, tempfile
        >>> path = write_json(tempfile.mkdtemp() + "/r.json", {"rhat": float("nan")})
        >>> json.loads(path.read_text())
        {'rhat': None}
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json_text(content, exact=exact)
    _write_atomically(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file.

    Args:
        path: File to read.

    Returns:
        The decoded content.

    Raises:
        FileNotFoundError: ``<file>: no such file``.
        ValueError: ``<file>: <what is wrong>`` if it cannot be read or is not valid JSON.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from error
