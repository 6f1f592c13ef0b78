"""Figures of a training run, saved as PNG files.

The functions draw on bare :class:`matplotlib.figure.Figure` objects, never on pyplot's global
state, so they work headless and leave an interactive session's backend alone.

- :func:`plot_energy_landscape`: the model density ``exp(-E_θ) ρ`` normalised on a 2-D grid
  (next to the true density when it is known);
- :func:`plot_samples`: data against negatives or model draws (first two coordinates);
- :func:`plot_images`: points of image data (digits, patches) shown as images;
- :func:`plot_mode_weights`: the model's mode weights over training, with the true weights;
- :func:`plot_training_curves`: loss, acceptance rates and validation over training.

Every function writes one file and returns its path; nothing is shown on screen. The first
three are in :mod:`~numpyro_ebm.plotting.points`, the last two in
:mod:`~numpyro_ebm.plotting.history`.
"""

from numpyro_ebm.plotting.history import plot_mode_weights, plot_training_curves
from numpyro_ebm.plotting.points import plot_energy_landscape, plot_images, plot_samples

__all__ = [
    "plot_energy_landscape",
    "plot_images",
    "plot_mode_weights",
    "plot_samples",
    "plot_training_curves",
]
