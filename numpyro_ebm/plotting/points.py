"""Figures of points: a 2-D model density, scatters of data and samples, and images."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from numpyro_ebm.metrics import grid, grid_log_density
from numpyro_ebm.plotting._save import save_figure

__all__ = ["plot_energy_landscape", "plot_images", "plot_samples"]

#: Points drawn per scatter: enough to show the shape of a 2-D density, few enough for a
#: readable picture.
_MAX_SCATTER_POINTS = 2000


def plot_energy_landscape(
    energy_fn: Callable[[Any], Any],
    bounds: Sequence[Sequence[float]],
    path: str | os.PathLike,
    *,
    true_log_prob: Callable[[Any], Any] | None = None,
    grid_points: int = 150,
) -> Path:
    """Plot the model density ``exp(-energy)`` normalised on a 2-D grid.

    Args:
        energy_fn: Total energy, ``(n, 2) -> (n,)`` (e.g. ``E_θ(x) - log ρ(x)``).
        bounds: ``((x_low, x_high), (y_low, y_high))``.
        path: PNG file to write.
        true_log_prob: Exact log density ``(n, 2) -> (n,)`` to show alongside, or ``None``.
        grid_points: Points per axis.

    Returns:
        The path written.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> out = Path(tempfile.mkdtemp()) / "energy.png"
        >>> plot_energy_landscape(lambda x: jnp.sum(x**2, -1), ((-2, 2), (-2, 2)), out,
        ...                       grid_points=20).exists()
        True
    """
    panels = [("model exp(-E) ρ", energy_fn)]
    if true_log_prob is not None:
        panels.append(("true density", lambda x: -true_log_prob(x)))
    points, _ = grid(bounds, grid_points)
    extent = [bounds[0][0], bounds[0][1], bounds[1][0], bounds[1][1]]
    fig = Figure(figsize=(4.5 * len(panels), 4), layout="constrained")  # colorbars clear of labels
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, fn) in zip(axes[0], panels, strict=True):
        density = np.exp(np.asarray(grid_log_density(fn, bounds, grid_points)))
        image = ax.imshow(
            density.reshape(grid_points, grid_points),
            origin="lower",
            extent=extent,
            aspect="auto",
            cmap="viridis",
        )
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title(title)
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
    del points
    return save_figure(fig, path)


def _subsample(points: np.ndarray, seed: int = 0) -> np.ndarray:
    points = np.asarray(points)
    if len(points) <= _MAX_SCATTER_POINTS:
        return points
    rows = np.random.default_rng(seed).choice(len(points), _MAX_SCATTER_POINTS, replace=False)
    return points[rows]


def _scatter_caption(points: np.ndarray, num_drawn: int, bounds: Any) -> str:
    """``"5000 points, 2000 drawn, 10 outside the axes, 1 not finite"``, the parts that apply.

    Counted over all the points, not the drawn subsample: a count of what a scatter leaves out.

    Example:
        >>> _scatter_caption(np.array([[0.0, 0.0], [5.0, 0.0], [np.nan, 0.0]]), 3, [(-1, 1)])
        '3 points, 1 outside the axes, 1 not finite'
    """
    finite = np.all(np.isfinite(points[:, :2]), axis=1)
    parts = [f"{len(points)} points"]
    if num_drawn < len(points):
        parts.append(f"{num_drawn} drawn")
    if bounds is not None:
        inside = finite.copy()
        for axis, (low, high) in enumerate(list(bounds)[: min(2, points.shape[1])]):
            inside &= (points[:, axis] >= low) & (points[:, axis] <= high)
        if num_outside := int(np.sum(finite & ~inside)):
            parts.append(f"{num_outside} outside the axes")
    if num_nonfinite := int(np.sum(~finite)):
        parts.append(f"{num_nonfinite} not finite")
    return ", ".join(parts)


def plot_samples(
    data: Any,
    samples: Any,
    path: str | os.PathLike,
    *,
    samples_label: str = "negatives",
    bounds: Sequence[Sequence[float]] | None = None,
) -> Path:
    """Scatter data and samples side by side in their first two coordinates.

    Args:
        data: Data points ``(n, d)``.
        samples: Negatives or model draws ``(m, d)``.
        path: PNG file to write.
        samples_label: Title of the samples' panel.
        bounds: Axis limits for the first two coordinates, or ``None``.

    Each title counts the points, and says how many a large set draws (2000, at random), how
    many lie outside ``bounds`` and how many are not finite.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "samples.png"
        >>> plot_samples(np.zeros((5, 3)), np.ones((5, 3)), out).exists()
        True
    """
    data, samples = np.asarray(data), np.asarray(samples)
    for name, array in (("data", data), ("samples", samples)):
        if array.ndim != 2 or array.shape[1] < 1:
            raise ValueError(f"expected {name} of shape (n, d), got {array.shape}")
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, points, title, color in (
        (axes[0], data, "data", "C0"),
        (axes[1], samples, samples_label, "C1"),
    ):
        drawn = _subsample(points)
        y = drawn[:, 1] if drawn.shape[1] > 1 else np.zeros(len(drawn))
        ax.scatter(drawn[:, 0], y, s=3, alpha=0.5, color=color)
        if bounds is not None:
            ax.set_xlim(bounds[0])
            if len(bounds) > 1:
                ax.set_ylim(bounds[1])
        ax.set_title(f"{title} ({_scatter_caption(points, len(drawn), bounds)})")
        ax.set_xlabel("x₁")
    axes[0].set_ylabel("x₂")
    return save_figure(fig, path)


def _gray_range(images: np.ndarray) -> tuple[float, float]:
    """The data's finite pixel range: the gray scale of both panels.

    Samples share it, so a diverged negative shows as saturated pixels instead of stretching
    the scale until every other image is blank; non-finite pixels show as background.

    Example:
        >>> _gray_range(np.array([[0.0, np.nan], [16.0, np.inf]]))
        (0.0, 16.0)
    """
    finite = images[np.isfinite(images)]
    if finite.size == 0:
        raise ValueError("expected data images with finite pixels, got none finite")
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def plot_images(
    data: Any,
    samples: Any,
    path: str | os.PathLike,
    image_shape: Sequence[int],
    *,
    samples_label: str = "negatives",
    num_images: int = 32,
) -> Path:
    """Show data and samples as images side by side (each panel a grid of ``num_images``).

    Args:
        data: Data points ``(n, h·w)`` in raw units.
        samples: Negatives or model draws ``(m, h·w)``, same units.
        path: PNG file to write.
        image_shape: ``(h, w)``.
        samples_label: Title of the samples' panel.
        num_images: Images per panel (the first ones), in rows of 8.

    Both panels use the data's gray scale (samples outside it saturate); each title counts
    the images with non-finite pixels.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "images.png"
        >>> plot_images(np.zeros((5, 4)), np.ones((5, 4)), out, (2, 2)).exists()
        True
    """
    height, width = (int(n) for n in image_shape)
    if num_images < 1:
        raise ValueError(f"expected num_images >= 1, got {num_images}")
    panels = []
    for name, points in (("data", data), ("samples", samples)):
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape[1] != height * width or len(points) == 0:
            raise ValueError(
                f"expected {name} of shape (n, {height * width}) with n >= 1, got {points.shape}"
            )
        panels.append(points[:num_images])
    low, high = _gray_range(panels[0])
    fig = Figure(figsize=(10, 3))
    axes = fig.subplots(1, 2)
    for ax, points, title in zip(axes, panels, ("data", samples_label), strict=True):
        columns = min(8, len(points))
        rows = -(-len(points) // columns)
        canvas = np.full((rows * (height + 1), columns * (width + 1)), np.nan)
        for index, image in enumerate(points.reshape(-1, height, width)):
            row, column = divmod(index, columns)
            top, left = row * (height + 1), column * (width + 1)
            canvas[top : top + height, left : left + width] = image
        ax.imshow(canvas, cmap="gray_r", vmin=low, vmax=high)
        broken = int(np.sum(~np.all(np.isfinite(points), axis=1)))
        note = f", {broken} with non-finite pixels" if broken else ""
        ax.set_title(f"{title} (first {len(points)}{note})")
        ax.axis("off")
    return save_figure(fig, path)
