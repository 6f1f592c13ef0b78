"""The run directory's figures: what they say they show is what they show."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba
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
    assert titles == ["data (3 points, 1 outside the axes)", "negatives (2 points)"]


def test_sample_titles_tell_drawn_from_outside_and_not_finite(tmp_path, monkeypatch):
    # 5000 points, 10 outside the box and 3 NaN rows: the scatter draws 2000 at random. The
    # title said "1996 of 5000 shown; rest clipped" of a subsample, as if 3000 were clipped.
    titles = _titles(monkeypatch)
    data = np.random.default_rng(0).uniform(-1, 1, (5000, 2))
    data[:10, 0] = 50.0
    data[10:13] = np.nan
    plotting.plot_samples(data, data[13:], tmp_path / "s.png", bounds=[(-2, 2), (-2, 2)])
    assert titles == [
        "data (5000 points, 2000 drawn, 10 outside the axes, 3 not finite)",
        "negatives (4987 points, 2000 drawn)",
    ]


def test_mode_weights_need_weights(tmp_path):
    with pytest.raises(ValueError, match="mode_weights"):
        plotting.plot_mode_weights([{"epoch": 1, "loss": 0.0}], tmp_path / "w.png")
    history = [{"epoch": 1, "mode_weights": [0.5, 0.5]}, {"epoch": 2, "mode_weights": [1.0]}]
    with pytest.raises(ValueError, match=r"expected 2 mode weights .* got 1 at epoch 2"):
        plotting.plot_mode_weights(history, tmp_path / "w.png")
    with pytest.raises(ValueError, match=r"true_weights of shape \(2,\).* got \(3,\)"):
        plotting.plot_mode_weights(history[:1], tmp_path / "w.png", true_weights=[0.2] * 3)


def test_many_modes_get_distinct_colours(tmp_path, monkeypatch):
    colours = []
    original = Figure.savefig

    def record(fig, *args, **kwargs):
        colours.extend(line.get_color() for line in fig.axes[0].get_lines())
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    history = [{"epoch": 1, "mode_weights": [1 / 12] * 12}]
    plotting.plot_mode_weights(history, tmp_path / "w.png")
    # Matplotlib's colour cycle has 10 colours: mode 10 was drawn as mode 0.
    assert len({to_rgba(colour) for colour in colours}) == 12


def test_training_curves_show_every_metric_and_the_validation(tmp_path, monkeypatch):
    titles = _titles(monkeypatch)
    history = [
        {"epoch": 1, "loss": 0.2, "accept_prob": 0.5},  # no global move yet, no validation
        {
            "epoch": 2,
            "loss": 0.1,
            "accept_prob": 0.6,
            "global_accept_prob": 0.3,
            "val_log_likelihood": -2.0,
            "val_log_likelihood_stderr": 0.1,
        },
    ]
    plotting.plot_training_curves(history, tmp_path / "t.png")
    assert titles == ["loss", "rates", "validation log-likelihood (± s.e.)"]


def test_images_are_drawn_in_rows_of_eight(tmp_path, monkeypatch):
    titles = _titles(monkeypatch)
    images = np.arange(40 * 16, dtype=float).reshape(40, 16)
    plotting.plot_images(images, images[:3], tmp_path / "i.png", (4, 4))
    assert titles == ["data (first 32)", "negatives (first 3)"]
    with pytest.raises(ValueError, match=r"shape \(n, 16\)"):
        plotting.plot_images(images[:, :9], images, tmp_path / "i.png", (4, 4))
    with pytest.raises(ValueError, match="num_images >= 1, got 0"):
        plotting.plot_images(images, images, tmp_path / "i.png", (4, 4), num_images=0)


def test_images_keep_the_data_gray_scale_whatever_the_samples(tmp_path, monkeypatch):
    # A NaN pixel in the data made the scale NaN and both panels blank; one diverged negative
    # stretched it until every other image was white.
    limits, titles = [], _titles(monkeypatch)
    original = Figure.savefig

    def record(fig, *args, **kwargs):
        limits.extend(ax.get_images()[0].get_clim() for ax in fig.axes)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    data = np.linspace(0.0, 16.0, 5 * 16).reshape(5, 16)
    data[0, 5] = np.nan
    samples = data.copy()
    samples[1, 3] = 1e6
    plotting.plot_images(data, samples, tmp_path / "i.png", (4, 4))
    assert limits == [(0.0, 16.0), (0.0, 16.0)]
    assert titles[-2:] == [
        "data (first 5, 1 with non-finite pixels)",
        "negatives (first 5, 1 with non-finite pixels)",
    ]


def test_the_path_returned_is_the_file_written(tmp_path):
    # Without a suffix matplotlib wrote `name.png` and the path returned named no file; a
    # directory gave `<dir>.png` beside it.
    data = np.zeros((3, 2))
    written = plotting.plot_samples(data, data, tmp_path / "no_suffix")
    assert written == tmp_path / "no_suffix.png" and written.is_file()
    with pytest.raises(ValueError, match=r"a file path for the figure .* got a directory"):
        plotting.plot_samples(data, data, tmp_path)
