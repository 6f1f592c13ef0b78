"""Validation of user-given sizes, scales and PRNG keys, with errors naming expected and given."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import numpy as np

__all__ = [
    "key_impl_name",
    "positive_float",
    "positive_int",
    "seed_value",
    "store_python_scalars",
    "typed_key",
]


def python_scalar(value: Any) -> Any:
    """The Python number a NumPy scalar or a 0-d NumPy or JAX array holds; others unchanged.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> python_scalar(jnp.array(8)), python_scalar(np.float32(0.5)), python_scalar("a")
        (8, 0.5, 'a')
    """
    is_array = isinstance(value, np.generic | np.ndarray | jax.Array)
    if is_array and np.shape(value) == () and not is_key_array(value):
        return np.asarray(value).item()
    return value


def flag(name: str, value: Any) -> bool:
    """Return ``value`` as a ``bool`` if it is one (a NumPy or 0-d array bool too), else raise.

    A string such as ``"no"`` would otherwise count as true.

    Example:
        >>> flag("fit_flow", "no")
        Traceback (most recent call last):
        ...
        ValueError: `fit_flow` must be True or False, got 'no'.
    """
    value_as_python = python_scalar(value)
    if not isinstance(value_as_python, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return value_as_python


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``, else raise.

    Args:
        name: The argument's name, for the message.
        value: The given value.
        minimum: Smallest allowed value.

    Returns:
        ``int(value)``; a 0-d integer array counts as its integer.

    Raises:
        ValueError: If ``value`` is not an integer (``bool`` included) or is below ``minimum``.

    Example:
        >>> positive_int("num_steps", 0)
        Traceback (most recent call last):
        ...
        ValueError: `num_steps` must be an integer >= 1, got 0.
    """
    number = python_scalar(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(number)


#: Seeds are 32-bit: JAX's default PRNG keeps only the low 32 bits of a larger seed (without
#: x64), so seeds 5 and 2**32 + 5 would give the same run.
SEED_LIMIT = 2**32


def seed_value(name: str, value: Any) -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[0, 2**32)``, else raise.

    Example:
        >>> seed_value("seed", 2**32 + 5)
        Traceback (most recent call last):
        ...
        ValueError: `seed` must be an integer in [0, 2**32), got 4294967301.
    """
    is_integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (is_integer and 0 <= value < SEED_LIMIT):
        raw_key = isinstance(value, np.ndarray | jax.Array) and value.dtype == np.uint32
        looks_like_key = is_key_array(value) or (raw_key and value.shape == (2,))
        hint = (
            " (a PRNG key: pass the integer you would give jax.random.key)"
            if looks_like_key
            else ""
        )
        raise ValueError(f"`{name}` must be an integer in [0, 2**32), got {value!r}{hint}.")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    """Return ``value`` as a ``float`` if it is a finite number ``> 0``, else raise.

    Args:
        name: The argument's name, for the message.
        value: The given value.

    Returns:
        ``float(value)``; a 0-d array counts as its number.

    Raises:
        ValueError: If ``value`` is not a real number, not finite, or not positive.

    Example:
        >>> positive_float("base_scale", 2)
        2.0
    """
    number = python_scalar(value)
    if (
        isinstance(number, bool)
        or not isinstance(number, numbers.Real)
        or not math.isfinite(number)
        or number <= 0
    ):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
    return float(number)


def store_python_scalars(settings: Any) -> None:
    """Replace a frozen dataclass's NumPy and 0-d array fields by the Python numbers they hold.

    Sweeps give settings as NumPy scalars (``for n in np.arange(...)``); stored as given, they
    would pass the checks (``numbers.Integral`` admits ``np.int64``) and then fail where the
    settings are written as JSON, after the work. Called first in ``__post_init__``.

    Args:
        settings: A dataclass instance (frozen or not); changed in place.

    Example:
        >>> import dataclasses, numpy as np
        >>> @dataclasses.dataclass(frozen=True)
        ... class Settings:
        ...     num_walkers: int
        ...     step_size: float
        >>> settings = Settings(np.arange(100)[64], np.float32(0.5))
        >>> store_python_scalars(settings)
        >>> settings
        Settings(num_walkers=64, step_size=0.5)
    """
    for field in dataclasses.fields(settings):
        object.__setattr__(settings, field.name, python_scalar(getattr(settings, field.name)))


def is_key_array(leaf: Any) -> bool:
    """Whether ``leaf`` is an array of typed PRNG keys (``jax.random.key``).

    Example:
        >>> import jax
        >>> is_key_array(jax.random.key(0)), is_key_array(jax.random.PRNGKey(0))
        (True, False)
    """
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def key_impl_name(keys: Any) -> str | None:
    """The PRNG implementation of typed ``keys`` (e.g. ``"rbg"``); ``None`` for raw keys.

    Example:
        >>> import jax
        >>> key_impl_name(jax.random.key(0, impl="rbg")), key_impl_name(jax.random.PRNGKey(0))
        ('rbg', None)
    """
    return str(jax.random.key_impl(keys)) if is_key_array(keys) else None


def typed_key(key: Any, impl: str | None = None) -> jax.Array:
    """Return ``key`` as a new-style typed PRNG key, accepting a raw ``uint32`` key as well.

    NumPyro's examples make keys with ``jax.random.PRNGKey`` (raw ``uint32`` data of shape
    ``(2,)`` for the default implementation); flowjax requires typed keys
    (``jax.random.key``). Public functions convert their key here, at the boundary, so both
    kinds work and give the same draws for the same key data. Works on traced keys too.

    Args:
        key: A typed key of shape ``()`` or a raw ``uint32`` key of the implementation's
            shape (``(2,)`` for threefry, the default).
        impl: The implementation of a raw key (a name such as ``"rbg"``); by default JAX's.

    Returns:
        A typed key with the same key data.

    Raises:
        TypeError: If ``key`` is neither kind of single key.

    Example:
        >>> import jax
        >>> raw, typed = jax.random.PRNGKey(0), jax.random.key(0)
        >>> bool((jax.random.key_data(typed_key(raw)) == jax.random.key_data(typed)).all())
        True
        >>> typed_key(0)
        Traceback (most recent call last):
        ...
        TypeError: Expected a PRNG key: a typed key ... or a raw uint32 key ...; got int 0.
    """
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    is_typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    if is_typed and shape == ():
        return key
    raw_shape = _raw_key_shape(impl)
    if not is_typed and dtype == np.uint32 and shape == raw_shape:
        return jax.random.wrap_key_data(key, impl=impl)
    given = (
        f"an array of dtype {dtype} and shape {shape}"
        if dtype is not None
        else f"{type(key).__name__} {key!r}"
    )
    raise TypeError(
        "Expected a PRNG key: a typed key of shape () (`jax.random.key`) or a raw uint32 key "
        f"of shape {raw_shape} (`jax.random.PRNGKey`); got {given}."
    )


def _raw_key_shape(impl: str | None = None) -> tuple[int, ...]:
    """Shape of a raw key of a PRNG implementation (``(2,)`` for threefry, the default)."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl))).shape
