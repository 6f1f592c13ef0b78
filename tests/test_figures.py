"""The run directory's figures: what they say they show is what they show."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from numpyro_ebm import plotting


def _titles(monkeypatch):
    titles = []
    original = Figure.savefig

    def record(fig, *args, **kwargs):
        titles.extend(ax.get_title() for ax in fig.axes)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return titles


def test_sample_titles_count_the_points_inside_the_axes(tmp_path, monkeypatch):
    titles = _titles(monkeypatch)
    data = np.array([[0.0, 0.0], [0.5, 0.5], [50.0, 0.0]])  # one point outside the box
    plotting.plot_samples(data, data[:2], tmp_path / "s.png", bounds=[(-1, 1), (-1, 1)])
    assert titles == ["data (2 of 3 shown; rest clipped)", "negatives (2 of 2 shown)"]


def test_mode_weights_need_weights(tmp_path):
    with pytest.raises(ValueError, match="mode_weights"):
        plotting.plot_mode_weights([{"epoch": 1, "loss": 0.0}], tmp_path / "w.png")


def test_images_are_drawn_in_rows_of_eight(tmp_path, monkeypatch):
    titles = _titles(monkeypatch)
    images = np.arange(40 * 16, dtype=float).reshape(40, 16)
    plotting.plot_images(images, images[:3], tmp_path / "i.png", (4, 4))
    assert titles == ["data (first 32)", "negatives (first 3)"]
    with pytest.raises(ValueError, match=r"shape \(n, 16\)"):
        plotting.plot_images(images[:, :9], images, tmp_path / "i.png", (4, 4))
