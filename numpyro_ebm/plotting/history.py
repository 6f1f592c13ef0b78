"""Figures of a training history: mode weights, loss, rates and validation per epoch."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from numpyro_ebm.plotting._save import save_figure

__all__ = ["plot_mode_weights", "plot_training_curves"]


def _check_history(history: Any) -> list[dict[str, Any]]:
    """``history`` as a list of per-epoch dicts (a training result's ``history``), or raise.

    Example:
        >>> _check_history({"epoch": 1, "loss": 0.1})
        Traceback (most recent call last):
        ...
        TypeError: expected a history: a list of per-epoch dicts (a training result's ...
    """
    if isinstance(history, Mapping) or not all(isinstance(entry, Mapping) for entry in history):
        raise TypeError(
            "expected a history: a list of per-epoch dicts (a training result's `history`), "
            f"got {type(history).__name__}"
        )
    return list(history)


def _mode_colors(num_modes: int) -> list[Any]:
    """One distinct colour per mode: matplotlib's 10 cycle colours, ``tab20`` or ``turbo`` beyond.

    Example:
        >>> len(set(map(tuple, _mode_colors(12))))
        12
    """
    import matplotlib

    if num_modes <= 10:
        return [f"C{mode}" for mode in range(num_modes)]
    cmap = matplotlib.colormaps["tab20" if num_modes <= 20 else "turbo"]
    positions = np.arange(num_modes) if num_modes <= 20 else np.linspace(0, 1, num_modes)
    return [cmap(position) for position in positions]


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
        ValueError: If no entry of the history has mode weights (nothing to plot), the entries
            have different numbers of them, or ``true_weights`` another number.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "weights.png"
        >>> history = [{"epoch": 1, "mode_weights": [0.5, 0.5]},
        ...            {"epoch": 2, "mode_weights": [0.4, 0.6]}]
        >>> plot_mode_weights(history, out, true_weights=[1 / 3, 2 / 3]).exists()
        True
    """
    rows = [entry for entry in _check_history(history) if "mode_weights" in entry]
    if not rows:
        raise ValueError("expected history entries with `mode_weights`, got none")
    num_modes = len(rows[0]["mode_weights"])
    for entry in rows:
        if len(entry["mode_weights"]) != num_modes:
            raise ValueError(
                f"expected {num_modes} mode weights in every entry (as epoch "
                f"{rows[0]['epoch']}'s), got {len(entry['mode_weights'])} at epoch {entry['epoch']}"
            )
    if true_weights is not None and np.shape(true_weights) != (num_modes,):
        raise ValueError(
            f"expected true_weights of shape ({num_modes},), as the history's mode weights, "
            f"got {np.shape(true_weights)}"
        )
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [entry["epoch"] for entry in rows]
    weights = np.array([entry["mode_weights"] for entry in rows], dtype=float)
    colors = _mode_colors(num_modes)
    for mode in range(num_modes):
        ax.plot(
            epochs, weights[:, mode], marker="o", ms=3, color=colors[mode], label=f"mode {mode}"
        )
        if true_weights is not None:
            ax.axhline(float(np.asarray(true_weights)[mode]), ls="--", color=colors[mode])
    ax.legend(fontsize="small")
    ax.set_xlabel("epoch")
    ax.set_ylabel("zone weight")
    ax.set_ylim(0, 1)
    ax.set_title("mode weights over training (dashed: truth)")
    return save_figure(fig, path)


#: The validation figure, drawn in a panel of its own with its standard error.
_VALIDATION = "val_log_likelihood"
#: History keys that are not per-step metrics.
_NOT_METRICS = ("epoch", "step", "time_s", "mode_weights", "loss")


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Plot the loss, the objective's other metrics and the validation per epoch.

    The middle panel shows the rates in ``[0, 1]`` the objective records (acceptance
    probabilities, classification accuracy) or, without any, its other metrics, from every
    entry (an epoch without one leaves a gap). A third panel, where the history has
    validations, shows the validation log-likelihood with its standard error.

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
    history = _check_history(history)
    epochs = [entry["epoch"] for entry in history]
    validated = [entry for entry in history if _VALIDATION in entry]
    fig = Figure(figsize=(13.5 if validated else 9, 3.5))
    ax_loss, ax_other, *ax_validation = fig.subplots(1, 3 if validated else 2)
    ax_loss.plot(epochs, [entry["loss"] for entry in history], marker="o", ms=3)
    ax_loss.axhline(0.0, color="gray", lw=0.5)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss")
    names = [
        name
        for name in dict.fromkeys(name for entry in history for name in entry)  # all, in order
        if name not in _NOT_METRICS and not name.startswith("val_")
    ]
    rates = [name for name in names if name.endswith(("accept_prob", "accuracy"))]
    for name in rates or names:
        values = [_number(entry.get(name)) for entry in history]
        ax_other.plot(epochs, values, marker="o", ms=3, label=name)
    if rates:
        ax_other.set_ylim(0, 1)
    ax_other.set_xlabel("epoch")
    ax_other.set_title("rates" if rates else "metrics")
    if names:
        ax_other.legend(fontsize="small")
    if validated:
        ax = ax_validation[0]
        ax.errorbar(
            [entry["epoch"] for entry in validated],
            [_number(entry[_VALIDATION]) for entry in validated],
            yerr=[_number(entry.get(f"{_VALIDATION}_stderr")) for entry in validated],
            marker="o",
            ms=3,
            capsize=2,
        )
        ax.set_xlabel("epoch")
        ax.set_title("validation log-likelihood (± s.e.)")
    return save_figure(fig, path)


def _number(value: Any) -> float:
    """A history value as a float to plot: NaN for ``None`` (not measured)."""
    return float("nan") if value is None else float(value)
