"""Saving a figure to a file: the one step every plot ends with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` and return the path of the file written.

    A path without a suffix gets ``.png``, as matplotlib would write it, so the path returned
    is the file's.

    Raises:
        ValueError: If ``path`` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"expected a file path for the figure (e.g. plot.png), got a directory: {str(path)!r}"
        )
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
