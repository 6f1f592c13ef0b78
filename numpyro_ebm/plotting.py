"""Figures of a training run, saved as PNG files.

The functions draw on bare :class:`matplotlib.figure.Figure` objects, never on pyplot's global
state, so they work headless and leave an interactive session's backend alone.

- :func:`plot_energy_landscape`: the model density ``exp(-E_θ) ρ`` normalised on a 2-D grid
  (next to the true density when it is known);
- :func:`plot_samples`: data against negatives or model draws (first two coordinates);
- :func:`plot_mode_weights`: the model's mode weights over training, with the true weights;
- :func:`plot_training_curves`: loss and acceptance rates over training.

Every function writes one file and returns its path; nothing is shown on screen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from numpyro_ebm.metrics import grid, grid_log_density

__all__ = [
    "plot_energy_landscape",
    "plot_images",
    "plot_mode_weights",
    "plot_samples",
    "plot_training_curves",
]

#: Points drawn per scatter: enough to show the shape of a 2-D density, few enough for a
#: readable picture.
_MAX_SCATTER_POINTS = 2000


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


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
    fig = Figure(figsize=(4.5 * len(panels), 4))
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
    return _save(fig, path)


def _subsample(points: np.ndarray, seed: int = 0) -> np.ndarray:
    points = np.asarray(points)
    if len(points) <= _MAX_SCATTER_POINTS:
        return points
    rows = np.random.default_rng(seed).choice(len(points), _MAX_SCATTER_POINTS, replace=False)
    return points[rows]


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
        total = len(points)
        points = _subsample(points)
        y = points[:, 1] if points.shape[1] > 1 else np.zeros(len(points))
        ax.scatter(points[:, 0], y, s=3, alpha=0.5, color=color)
        inside = np.ones(len(points), dtype=bool)
        if bounds is not None:
            ax.set_xlim(bounds[0])
            inside &= (points[:, 0] >= bounds[0][0]) & (points[:, 0] <= bounds[0][1])
            if len(bounds) > 1:
                ax.set_ylim(bounds[1])
                inside &= (y >= bounds[1][0]) & (y <= bounds[1][1])
        shown = f"{int(inside.sum())} of {total} shown"
        ax.set_title(f"{title} ({shown})" if inside.all() else f"{title} ({shown}; rest clipped)")
        ax.set_xlabel("x₁")
    axes[0].set_ylabel("x₂")
    return _save(fig, path)


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

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "images.png"
        >>> plot_images(np.zeros((5, 4)), np.ones((5, 4)), out, (2, 2)).exists()
        True
    """
    height, width = (int(n) for n in image_shape)
    panels = []
    for name, points in (("data", data), ("samples", samples)):
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] != height * width:
            raise ValueError(f"expected {name} of shape (n, {height * width}), got {points.shape}")
        panels.append(points[:num_images])
    low = min(float(p.min()) for p in panels)
    high = max(float(p.max()) for p in panels)
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
        ax.set_title(f"{title} (first {len(points)})")
        ax.axis("off")
    return _save(fig, path)


def plot_mode_weights(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    true_weights: Any = None,
) -> Path:
    """Plot each mode's weight over training epochs, with the true weights dashed.

    Args:
        history: Per-epoch dicts with ``"epoch"`` and ``"mode_weights"``.
        path: PNG file to write.
        true_weights: True mode weights ``(k,)``, or ``None``.

    Returns:
        The path written.

    Raises:
        ValueError: If no entry of the history has mode weights (nothing to plot).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "weights.png"
        >>> history = [{"epoch": 1, "mode_weights": [0.5, 0.5]},
        ...            {"epoch": 2, "mode_weights": [0.4, 0.6]}]
        >>> plot_mode_weights(history, out, true_weights=[1 / 3, 2 / 3]).exists()
        True
    """
    rows = [entry for entry in history if "mode_weights" in entry]
    if not rows:
        raise ValueError("expected history entries with `mode_weights`, got none")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [entry["epoch"] for entry in rows]
    weights = np.array([entry["mode_weights"] for entry in rows])
    for mode in range(weights.shape[1]):
        ax.plot(epochs, weights[:, mode], marker="o", ms=3, color=f"C{mode}", label=f"mode {mode}")
        if true_weights is not None:
            ax.axhline(float(np.asarray(true_weights)[mode]), ls="--", color=f"C{mode}")
    ax.legend(fontsize="small")
    ax.set_xlabel("epoch")
    ax.set_ylabel("zone weight")
    ax.set_ylim(0, 1)
    ax.set_title("mode weights over training (dashed: truth)")
    return _save(fig, path)


#: History keys that are not per-step metrics.
_NOT_METRICS = ("epoch", "step", "time_s", "mode_weights", "loss")


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Plot the loss and the objective's other metrics per epoch.

    The right panel shows the rates in ``[0, 1]`` the objective records (acceptance
    probabilities, classification accuracy) or, without any, its other metrics.

    Args:
        history: Per-epoch dicts with ``"epoch"``, ``"loss"`` and the objective's metrics
            (for ``pcd``: ``"accept_prob"``, ``"global_accept_prob"``, ...).
        path: PNG file to write.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "curves.png"
        >>> history = [{"epoch": 1, "loss": 0.1, "accept_prob": 0.5, "global_accept_prob": 0.2}]
        >>> plot_training_curves(history, out).exists()
        True
    """
    epochs = [entry["epoch"] for entry in history]
    fig = Figure(figsize=(9, 3.5))
    ax_loss, ax_other = fig.subplots(1, 2)
    ax_loss.plot(epochs, [entry["loss"] for entry in history], marker="o", ms=3)
    ax_loss.axhline(0.0, color="gray", lw=0.5)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss")
    names = [name for name in (history[0] if history else {}) if name not in _NOT_METRICS]
    rates = [name for name in names if name.endswith(("accept_prob", "accuracy"))]
    for name in rates or names:
        values = [entry.get(name, float("nan")) for entry in history]
        ax_other.plot(epochs, values, marker="o", ms=3, label=name)
    if rates:
        ax_other.set_ylim(0, 1)
    ax_other.set_xlabel("epoch")
    ax_other.set_title("rates" if rates else "metrics")
    if names:
        ax_other.legend(fontsize="small")
    return _save(fig, path)
