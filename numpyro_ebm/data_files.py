"""Reading a user's data file: ``.npy`` or ``.csv``, checked to be a finite ``(n, d)`` array."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax
import numpy as np

__all__ = ["SUPPORTED_SUFFIXES", "load_data", "validate_data"]

#: File extensions :func:`load_data` reads.
SUPPORTED_SUFFIXES = (".npy", ".csv")


def validate_data(x: np.ndarray | jax.Array) -> np.ndarray:
    """Check that data is a finite, non-empty ``(n, d)`` array of numbers.

    Args:
        x: Candidate data.

    Returns:
        ``x`` as a floating-point NumPy array (the same dtype if it already was one).

    Raises:
        ValueError: If ``x`` is not real numbers (integers or floats), not 2-D, empty, or holds
            NaN or infinite values.

    Example:
        >>> validate_data([[0.0, 1.0], [2.0, 3.0]]).shape
        (2, 2)
    """
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"expected a numeric array of shape (n, d), got {type(x).__name__}"
        ) from error
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"expected a numeric array of shape (n, d), got dtype {array.dtype}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(float)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array of shape (n, d), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"expected a non-empty array of shape (n, d) with n >= 1 and d >= 1, "
            f"got shape {array.shape}"
        )
    bad_rows = ~np.all(np.isfinite(array), axis=1)
    if bad_rows.any():
        raise ValueError(
            f"expected finite data, got NaN or infinite values in {int(bad_rows.sum())} of "
            f"{array.shape[0]} rows (first bad row: {int(np.argmax(bad_rows))})"
        )
    return array


def _csv_has_header(path: Path) -> bool:
    with path.open() as handle:
        first_line = handle.readline()
    try:
        [float(field) for field in first_line.strip().split(",")]
    except ValueError:
        return True
    return False


def load_data(path: str | os.PathLike) -> np.ndarray:
    r"""Read an ``(n, d)`` data array from a ``.npy`` or ``.csv`` file.

    A ``.csv`` file is comma separated, one point per line; a first line that does not parse as
    numbers is taken as a header and skipped.

    Args:
        path: Path of the file.

    Returns:
        The data, checked by :func:`validate_data`.

    Raises:
        ValueError: If the extension is not supported or the data fails :func:`validate_data`.
        FileNotFoundError: If the file does not exist.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "points.csv"
        >>> _ = path.write_text("x,y\n0.5,1.0\n2.0,-1.0\n")
        >>> load_data(path).tolist()
        [[0.5, 1.0], [2.0, -1.0]]
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"expected a data file ending in one of {SUPPORTED_SUFFIXES}, got {str(path)!r}"
        )
    if not path.exists():
        raise FileNotFoundError(f"no data file at {str(path)!r}")
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        skiprows = 1 if _csv_has_header(path) else 0
        try:
            with warnings.catch_warnings():
                # An empty file is reported by `validate_data` below, as a ValueError.
                warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
                array = np.loadtxt(path, delimiter=",", skiprows=skiprows, ndmin=2)
        except ValueError as error:
            raise ValueError(
                f"expected comma-separated numbers in {str(path)!r}, got: {error}"
            ) from error
    return validate_data(array)
