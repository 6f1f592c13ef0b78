"""Validation of user-given sizes and scales, with errors that name what was expected and given."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["positive_float", "positive_int"]


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``, else raise.

    Args:
        name: The argument's name, for the message.
        value: The given value.
        minimum: Smallest allowed value.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: If ``value`` is not an integer (``bool`` included) or is below ``minimum``.

    Example:
        >>> positive_int("num_steps", 0)
        Traceback (most recent call last):
        ...
        ValueError: `num_steps` must be an integer >= 1, got 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    """Return ``value`` as a ``float`` if it is a finite number ``> 0``, else raise.

    Args:
        name: The argument's name, for the message.
        value: The given value.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: If ``value`` is not a real number, not finite, or not positive.

    Example:
        >>> positive_float("base_scale", 2)
        2.0
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
    return float(value)
