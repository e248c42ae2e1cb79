"""Plot helpers draw what they are given, with labelled axes (Agg backend, no display)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minigen import data, plot  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_density_1d_draws_the_exact_density_and_a_normalised_histogram():
    target = data.mixture_1d()
    ax = plot.density_1d(target.sample(5000, torch.Generator().manual_seed(0)), target)
    assert ax.get_xlabel() and ax.get_ylabel() == "density"
    exact = [l for l in ax.get_lines() if l.get_label() == "exact density"][0]
    x, y = exact.get_data()
    np.testing.assert_allclose(y, target.log_prob(torch.as_tensor(x)[:, None]).exp(), rtol=1e-6)
    area = sum(p.get_height() * p.get_width() for p in ax.patches)
    assert abs(area - 1) < 0.02  # density-normalised histogram over the plotted range
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"model samples", "exact density"}


def test_samples_2d_plots_every_point():
    x = torch.randn(300, 2)
    ax = plot.samples_2d(x, title="t")
    np.testing.assert_allclose(ax.collections[0].get_offsets(), x.numpy())
    assert ax.get_xlabel() == "$x_1$" and ax.get_ylabel() == "$x_2$"


def test_grid_2d_covers_the_bounds():
    X, Y, pts = plot.grid_2d((-1, 2, -3, 4), n=5)
    assert pts.shape == (25, 2) and X.shape == (5, 5)
    assert pts.min(0).values.tolist() == [-1, -3] and pts.max(0).values.tolist() == [2, 4]


def test_density_2d_shows_exp_of_log_prob():
    target = data.mixture_2d()
    ax = plot.density_2d(target.log_prob, bounds=(-3, 3, -3, 3), n=50)
    values = np.asarray(ax.collections[0].get_array()).ravel()
    _, _, pts = plot.grid_2d((-3, 3, -3, 3), 50)
    np.testing.assert_allclose(np.sort(values), np.sort(target.log_prob(pts).exp().numpy()), rtol=1e-5)


def test_loss_curve_smooths_with_a_moving_average_and_labels_several_curves():
    ax = plot.loss_curve({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 0.0, 0.0, 0.0]}, smooth=2)
    x, y = ax.get_lines()[0].get_data()
    np.testing.assert_allclose(y, [1.5, 2.5, 3.5])
    np.testing.assert_allclose(x, [1, 2, 3])
    assert ax.get_xlabel() == "step" and ax.get_legend() is not None


def test_optimizer_paths_draws_each_path_on_contours():
    f = lambda p: (1 - p[:, 0]) ** 2 + 100 * (p[:, 1] - p[:, 0] ** 2) ** 2
    path = torch.tensor([[-1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    ax = plot.optimizer_paths(f, {"sgd": path}, optimum=(1, 1))
    lines = {l.get_label(): l for l in ax.get_lines()}
    np.testing.assert_allclose(np.column_stack(lines["sgd"].get_data()), path.numpy())
    assert "minimum" in lines and ax.get_xlabel() == "$x$"


# --- chapters 1 and 2 ---
def test_curves_draws_each_series_and_drops_non_finite_points():
    ax = plot.curves({"a": ([1, 2, 3], [1.0, float("nan"), 3.0]), "b": ([1, 2], [2.0, 4.0])},
                     xlabel="width", ylabel="error", logx=True, logy=True, styles={"b": "k--"})
    lines = {l.get_label(): l for l in ax.get_lines()}
    np.testing.assert_allclose(np.column_stack(lines["a"].get_data()), [[1, 1], [3, 3]])
    assert lines["b"].get_linestyle() == "--" and ax.get_xscale() == "log"
    assert ax.get_xlabel() == "width" and ax.get_legend() is not None


def test_regression_band_fills_between_the_band_edges():
    grid = torch.linspace(-1, 1, 50)[:, None]
    mean = grid**2
    ax = plot.regression_band(torch.zeros(5, 1), torch.ones(5, 1), grid, mean, mean - 1, mean + 1,
                              true_mean=mean, true_band=(mean - 1, mean + 1))
    labels = {l.get_label() for l in ax.get_lines()}
    assert {"model mean", "true mean", "true 90% band"} <= labels
    np.testing.assert_allclose(ax.get_lines()[0].get_data()[1], mean.numpy().ravel())
    assert ax.get_xlabel() == "$x$" and len(ax.collections) == 2  # data and band
