"""The figures ``numpyro-ebm train`` writes into a run directory, in the data's raw units."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from numpyro_ebm import plotting
from numpyro_ebm.training.energy_specs import square_image_shape
from numpyro_ebm.training.step import TrainResult

__all__ = ["write_figures"]

#: Smallest number of pixels shown as an image (4×4); smaller square data stays a scatter.
_MIN_IMAGE_DIM = 16


def _sample_figures(result: TrainResult, negatives: np.ndarray, out: Path) -> dict[str, Path]:
    """``samples.png`` (first two coordinates) and, for square images, ``images.png``."""
    trainer = result.trainer
    prep = trainer.preprocessing
    data, samples = (prep.inverse(np.asarray(x)) for x in (trainer.data, negatives))
    # Built-ins with a known density have box bounds around their modes; data plots autoscale.
    bounds = trainer.dataset.bounds[:2] if trainer.dataset.is_builtin else None
    figures = {"samples": plotting.plot_samples(data, samples, out / "samples.png", bounds=bounds)}
    side = math.isqrt(trainer.dim)
    is_image = prep.dequantize or trainer.config.energy == "conv"  # pixel levels, or a conv net
    if is_image and trainer.dim >= _MIN_IMAGE_DIM and side * side == trainer.dim:
        figures["images"] = plotting.plot_images(
            data, samples, out / "images.png", square_image_shape(trainer.dim)
        )
    return figures


def write_figures(result: TrainResult, out: Path) -> dict[str, Path]:
    """Write a trained run's PNG figures into ``out``.

    ``energy.png`` (2-D: the model's energy on the dataset's box, beside the true density where
    known), ``samples.png`` and ``images.png`` (negatives beside data; images for square pixel
    data), ``mode_weights.png`` (when the modes' weights were measured) and ``training.png``.

    Args:
        result: The training result (its state is the model plotted).
        out: The run directory.

    Returns:
        Figure name -> path written.
    """
    trainer, dataset = result.trainer, result.trainer.dataset
    figures = {}
    if trainer.dim == 2:
        total_energy, prep = trainer.total_energy_fn(result.state), trainer.preprocessing
        figures["energy"] = plotting.plot_energy_landscape(
            lambda x: total_energy((x - prep.shift) / prep.scale),  # raw units, as the data
            dataset.bounds,
            out / "energy.png",
            true_log_prob=dataset.log_prob,
            grid_points=max(trainer.config.grid_points, 50),
        )
    negatives = trainer.negatives(result.state)
    if negatives is not None:
        figures.update(_sample_figures(result, negatives, out))
    if any("mode_weights" in entry for entry in result.history):
        figures["mode_weights"] = plotting.plot_mode_weights(
            result.history, out / "mode_weights.png", true_weights=dataset.mode_weights
        )
    figures["training"] = plotting.plot_training_curves(result.history, out / "training.png")
    return figures
