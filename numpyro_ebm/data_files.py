"""Reading a user's data file: ``.npy`` or ``.csv``, checked to be a finite ``(n, d)`` array.

A file often carries columns that are not features: a row index written by ``pandas.to_csv``
(first column) or a class label (last column). :func:`check_columns` drops a first column that
is an index, with a warning, and warns about a last column that looks like a label (kept: it may
be a genuine discrete feature).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax
import numpy as np

from numpyro_ebm._warnings import warn_user

__all__ = ["SUPPORTED_SUFFIXES", "check_columns", "load_data", "validate_data"]

#: File extensions :func:`load_data` reads.
SUPPORTED_SUFFIXES = (".npy", ".csv")

# Header names (lower case, stripped) of a first column that is a row index: "" and "unnamed: 0"
# are what pandas writes and reads back for an unnamed index.
_INDEX_NAMES = frozenset({"", "index", "idx", "id", "unnamed: 0", "row", "rownames"})
# Header names (lower case, stripped) of a last column that is a class label or target. "y" is one
# only without an "x" column: "x,y" names the coordinates of 2-D points.
_LABEL_NAMES = frozenset(
    "label labels target targets class classes y species category outcome cluster digit".split()
)
# Fewer rows than these are no evidence: 0, 1, 2 in order, or two distinct integers among a
# dozen rows, happen by chance in small integer data.
_MIN_ROWS_INDEX = 3
_MIN_ROWS_LABEL = 20
# At most this many distinct integer values make a last column look like a label (10 classes
# covers digits and most classification tables).
_MAX_LABEL_CLASSES = 10


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


def _csv_header(path: Path) -> list[str] | None:
    """The column names of a CSV's first line, or ``None`` if that line parses as numbers."""
    with path.open() as handle:
        fields = handle.readline().strip().split(",")
    try:
        [float(field) for field in fields]
    except ValueError:
        return [field.strip().strip("'\"").strip() for field in fields]
    return None


def _is_integer_column(column: np.ndarray) -> bool:
    return bool(np.all(np.mod(column, 1.0) == 0.0))


def _looks_like_index(column: np.ndarray, name: str | None) -> str | None:
    """Why a first column looks like a row index, or ``None``."""
    if name is not None and name.lower() in _INDEX_NAMES:
        return f"its header is {name!r}"
    if len(column) < _MIN_ROWS_INDEX:
        return None
    steps = np.arange(len(column))
    if np.array_equal(column, steps):
        return "its values are 0, 1, ..., n - 1 in order"
    if np.array_equal(column, steps + 1):
        return "its values are 1, 2, ..., n in order"
    return None


def _looks_like_label(data: np.ndarray, names: list[str] | None) -> str | None:
    """Why the last column of ``data`` looks like a label, or ``None``."""
    if names is not None:
        name = names[-1].lower()
        if name in _LABEL_NAMES and not (name == "y" and "x" in map(str.lower, names)):
            return f"its header is {names[-1]!r}"
    last, others = data[:, -1], data[:, :-1]
    if len(last) < _MIN_ROWS_LABEL or not _is_integer_column(last):
        return None
    num_values = len(np.unique(last))
    if num_values > _MAX_LABEL_CLASSES:
        return None
    if any(_is_integer_column(column) for column in others.T):
        return None
    return f"it holds {num_values} distinct integers while every other column has fractions"


def _quoted(names: list[str] | None, column: int) -> str:
    return "" if names is None else f" ({names[column]!r})"


def check_columns(
    data: np.ndarray, header: list[str] | None = None, *, source: str = "data"
) -> np.ndarray:
    """Drop a first column that is a row index and warn about a last column like a label.

    The first column is an index if its header is empty or named like one (``index``, ``id``,
    ``Unnamed: 0``), or if its values are exactly 0..n-1 or 1..n in order (n >= 3): it is dropped
    with a warning. The last column looks like a label if its header is named like one
    (``label``, ``target``, ``class``, ``species``, ..., or ``y`` without an ``x`` column), or if
    it holds at most 10 distinct integers (n >= 20) while no other column is integer-valued: it
    is kept, with a warning saying how to remove it. Data with one column is returned as given.

    Args:
        data: A checked ``(n, d)`` array (see :func:`validate_data`).
        header: Column names (a CSV's first line), or ``None``; ignored unless it has d names.
        source: What the warnings name, such as the file path.

    Returns:
        ``data``, without its first column if that is an index.

    Example:
        >>> import warnings
        >>> data = np.array([[0.0, 0.5], [1.0, -1.5], [2.0, 2.25]])
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     check_columns(data).tolist()
        [[0.5], [-1.5], [2.25]]
        >>> print(caught[0].message)
        data: dropped column 0, which looks like a row index (its values are 0, 1, ..., n - 1 in...
    """
    if data.shape[1] < 2:
        return data
    names = header if header is not None and len(header) == data.shape[1] else None
    reason = _looks_like_index(data[:, 0], None if names is None else names[0])
    if reason is not None:
        warn_user(
            f"{source}: dropped column 0{_quoted(names, 0)}, which looks like a row index "
            f"({reason}); remove it from the file to silence this warning",
        )
        data, names = data[:, 1:], None if names is None else names[1:]
    reason = _looks_like_label(data, names) if data.shape[1] >= 2 else None
    if reason is not None:
        warn_user(
            f"{source}: the last column{_quoted(names, -1)} looks like a class label ({reason}) "
            f"and is kept as a feature; if it is a label, remove it (e.g. save data[:, :-1])",
        )
    return data


def load_data(path: str | os.PathLike) -> np.ndarray:
    r"""Read an ``(n, d)`` data array from a ``.npy`` or ``.csv`` file.

    A ``.csv`` file is comma separated, one point per line; a first line that does not parse as
    numbers is taken as a header (column names). A first column that is a row index is dropped
    and a last column that looks like a label is kept, each with a warning
    (:func:`check_columns`).

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
    header = None
    if path.is_dir():
        raise ValueError(f"expected a data file, got a directory: {str(path)!r}")
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(
                f"expected a NumPy array of numbers in {str(path)!r} (np.save of an (n, d) "
                f"array), got a file that does not load as one: {error}"
            ) from error
    else:
        header = _csv_header(path)
        skiprows = 0 if header is None else 1
        try:
            with warnings.catch_warnings():
                # An empty file is reported by `validate_data` below, as a ValueError.
                warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
                array = np.loadtxt(path, delimiter=",", skiprows=skiprows, ndmin=2)
        except ValueError as error:
            raise ValueError(
                f"expected comma-separated numbers in {str(path)!r}, got: {error}"
            ) from error
    return check_columns(validate_data(array), header, source=str(path))
