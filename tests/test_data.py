"""Exact targets: densities integrate to 1, samples follow the exact CDF, scores are gradients."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import data, metrics

TARGETS_1D = [data.mixture_1d(), data.skewed_mixture_1d()]
TARGETS_2D = [data.eight_gaussians(), data.mixture_2d()]
FAMILY = data.targets()
ALL_1D = {"mixture_1d": data.mixture_1d(), **data.targets(1)}
ALL_2D = {"mixture_2d": data.mixture_2d(), **data.targets(2)}


@pytest.mark.parametrize("name", ALL_1D)
def test_1d_density_integrates_to_one_and_matches_cdf(name):
    target = ALL_1D[name]
    u = torch.linspace(-math.pi / 2, math.pi / 2, 400_001, dtype=torch.float64)[1:-1]
    t = torch.tan(u)  # the whole real line, heavy tails included: dx = du / cos(u)^2
    p = target.log_prob(t[:, None]).exp() / torch.cos(u) ** 2
    assert_close(torch.trapezoid(p, u), torch.tensor(1.0, dtype=torch.float64), atol=1e-8, rtol=0)
    cdf_numeric = torch.cumulative_trapezoid(p, u)
    assert_close(cdf_numeric[::1000], (target.cdf(t[1:]) - target.cdf(t[:1]))[::1000], atol=1e-8, rtol=0)
    assert_close(target.cdf(torch.tensor([-1e9, 1e9], dtype=torch.float64)),
                 torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-8, rtol=0)


@pytest.mark.parametrize("target", list(ALL_1D.values()), ids=list(ALL_1D))
def test_1d_exact_samples_pass_ks_test(target):
    x = target.sample(20_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    ks = metrics.ks_1d(x, target.cdf)
    assert ks < 1.63 / math.sqrt(20_000)  # 1% critical value of the KS statistic


@pytest.mark.parametrize("target", TARGETS_1D + TARGETS_2D)
def test_score_is_gradient_of_log_prob(target):
    x = target.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(target.log_prob(x).sum(), x)
    assert_close(target.score(x), grad)


def test_noised_mixture_is_the_law_of_affine_noise():
    target, a, sigma = data.mixture_2d(), 0.6, 0.7
    g = torch.Generator().manual_seed(0)
    x = a * target.sample(200_000, g, torch.float64) + sigma * torch.randn(200_000, 2, generator=g,
                                                                          dtype=torch.float64)
    noised = target.noised(a, sigma)
    assert_close(x.mean(0), (noised.weights[:, None] * noised.means).sum(0), atol=5e-3, rtol=0)
    y = noised.sample(200_000, g, torch.float64)
    assert metrics.sliced_wasserstein(x[:20_000], y[:20_000], generator=g) < 0.03


def test_mixture_entropy_matches_monte_carlo():
    target = data.mixture_1d()
    x = target.sample(400_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(target.entropy() - float(-target.log_prob(x).mean())) < 5e-3


def test_gaussian_entropy_closed_form():
    g = data.GaussianMixture(torch.tensor([1.0]), torch.tensor([[0.3]]), torch.tensor([0.7], dtype=torch.float64))
    assert abs(g.entropy() - 0.5 * math.log(2 * math.pi * math.e * 0.49)) < 1e-8


def test_sampling_is_deterministic_given_a_generator():
    for target in TARGETS_1D + TARGETS_2D + [data.two_moons()]:
        a = target.sample(100, torch.Generator().manual_seed(3))
        b = target.sample(100, torch.Generator().manual_seed(3))
        assert torch.equal(a, b)
        assert a.shape == (100, target.dim)


def test_two_moons_points_lie_near_the_arcs():
    moons = data.TwoMoons(noise=0.0)
    x = moons.sample(1000, torch.Generator().manual_seed(0), torch.float64)
    upper = (x[:, 0].pow(2) + x[:, 1].pow(2) - 1).abs() < 1e-9
    lower = ((x[:, 0] - 1).pow(2) + (x[:, 1] - 0.5).pow(2) - 1).abs() < 1e-9
    assert bool((upper | lower).all())
    assert 0.45 < upper.double().mean() < 0.55


def test_bad_mixture_parameters_raise():
    with pytest.raises(ValueError, match="simplex"):
        data.GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 1), torch.ones(2))
    with pytest.raises(ValueError, match="shapes disagree"):
        data.GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(3, 1), torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        data.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 1), torch.zeros(1))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        data.mixture_2d().log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="1D"):
        data.mixture_2d().cdf(torch.zeros(5, 2))


# ---- the family of targets: registry, sampling, densities -----------------------------------

def _log_prob(target, x: torch.Tensor, chunk: int = 20_000) -> torch.Tensor:
    return torch.cat([target.log_prob(c) for c in x.split(chunk)])


def _midpoint_grid(half_width: float, m: int) -> tuple[torch.Tensor, float]:
    """Centres ``(m*m, 2)`` of an ``m x m`` grid of cells on [-L, L]^2, and the cell side."""
    h = 2 * half_width / m
    t = -half_width + h * (torch.arange(m, dtype=torch.float64) + 0.5)
    X, Y = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([X.reshape(-1), Y.reshape(-1)], 1), h


def _chi2_quantile(df: int, z: float = 3.0902) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: the 0.999 quantile)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _binned_chi2(target, x: torch.Tensor, half_width: float = 5.0, bins: int = 40,
                 sub: int = 8) -> tuple[float, float]:
    """Pearson's statistic of the sample ``x`` in square bins against the density, and its 0.999 quantile.

    Bin probabilities are midpoint sums of the density on ``sub x sub`` cells per bin (exact for the
    checkerboard, whose edges fall on bin edges); the mass outside [-L, L]^2 is one more bin, and
    bins expecting fewer than 5 points are pooled, so the statistic is close to chi-square(k - 1).
    A point where the density vanishes (a light square) lands in a bin that expects it nowhere.
    """
    centres, h = _midpoint_grid(half_width, bins * sub)
    p = _log_prob(target, centres).exp().reshape(bins, sub, bins, sub).sum((1, 3)) * h**2  # (bins, bins)
    edges = torch.linspace(-half_width, half_width, bins + 1, dtype=torch.float64)
    counts = torch.histogramdd(x.double(), bins=[edges, edges]).hist  # (bins, bins)
    n = len(x)
    expected, observed = n * p.reshape(-1), counts.reshape(-1)
    expected = torch.cat([expected, (n - expected.sum()).reshape(1)])
    observed = torch.cat([observed, (n - observed.sum()).reshape(1)])
    small = expected < 5  # pooled; the pool joins the least likely kept bin if it is still small
    expected, observed, pool_e, pool_o = expected[~small], observed[~small], expected[small].sum(), observed[small].sum()
    if pool_e >= 5:
        expected, observed = torch.cat([expected, pool_e.reshape(1)]), torch.cat([observed, pool_o.reshape(1)])
    else:
        i = expected.argmin()
        expected[i], observed[i] = expected[i] + pool_e, observed[i] + pool_o
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    return chi2, _chi2_quantile(len(expected) - 1)


def test_registry_lists_the_family_by_dimension():
    assert set(FAMILY) == {"skewed_mixture_1d", "four_mode_1d", "student_t_1d", "eight_gaussians",
                           "two_moons", "checkerboard", "pinwheel", "spirals", "rings"}
    assert {**data.targets(1), **data.targets(2)}.keys() == FAMILY.keys()
    assert all(t.dim == 1 for t in data.targets(1).values())
    assert all(t.dim == 2 for t in data.targets(2).values())
    assert data.targets()["rings"] is not data.targets()["rings"]  # fresh instances
    with pytest.raises(ValueError, match="dim must be 1, 2 or None"):
        data.targets(3)


@pytest.mark.parametrize("name", FAMILY)
def test_family_scale_is_of_order_one(name):
    x = FAMILY[name].sample(50_000, torch.Generator().manual_seed(0), torch.float64)
    mad = (x - x.median(0).values).abs().median(0).values  # robust: the Student-t has heavy tails
    assert bool(((mad > 0.4) & (mad < 1.5)).all()), f"{name}: median absolute deviation {mad.tolist()}"


@pytest.mark.parametrize("name", FAMILY)
def test_family_sampling_shapes_dtypes_and_generators(name):
    target = FAMILY[name]
    a = target.sample(500, torch.Generator().manual_seed(3))
    b = target.sample(500, torch.Generator().manual_seed(3))
    c = target.sample(500, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (500, target.dim) and a.dtype == torch.float32
    x = target.sample(500, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert x.dtype == torch.float64
    assert_close(x.float(), a)  # float32 is the rounded float64 draw
    on_meta = target.sample(7, device="meta")  # no data: checks that no tensor is left on the CPU
    assert on_meta.device.type == "meta" and target.log_prob(on_meta).device.type == "meta"
    if target.dim == 1:
        assert target.cdf(on_meta).device.type == "meta"
    logp = target.log_prob(x)
    assert logp.shape == (500,) and logp.dtype == torch.float64 and bool(logp.isfinite().all())
    assert target.log_prob(a).dtype == torch.float32


@pytest.mark.parametrize("name", ALL_2D)
def test_2d_density_integrates_to_one_on_a_midpoint_grid(name):
    centres, h = _midpoint_grid(6.0, 300)  # cell edges on multiples of 0.04: the squares' edges too
    mass = _log_prob(ALL_2D[name], centres).exp().sum() * h**2
    assert_close(mass, torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ALL_2D)
def test_2d_sample_histogram_matches_density(name):
    target = ALL_2D[name]
    x = target.sample(100_000, torch.Generator().manual_seed(5), torch.float64)
    chi2, quantile = _binned_chi2(target, x)
    assert chi2 < quantile, f"{name}: chi2 {chi2:.0f} above the 0.999 quantile {quantile:.0f}"


@pytest.mark.parametrize("wrong, right", [
    (data.Pinwheel(rate=0.22), data.pinwheel()),
    (data.rings(std=0.09), data.rings()),
    (data.two_moons(noise=0.11), data.two_moons()),
    (data.Checkerboard(side=1.05), data.checkerboard()),
], ids=["pinwheel_rate", "rings_std", "moons_noise", "checkerboard_side"])
def test_binned_chi2_detects_a_ten_percent_change(wrong, right):
    x = wrong.sample(100_000, torch.Generator().manual_seed(5), torch.float64)
    chi2, quantile = _binned_chi2(right, x)
    assert chi2 > quantile


def test_student_t_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    for df in range(1, 8):
        t = data.StudentT(df=df, loc=0.3, scale=1.7)
        ref_cdf = stats.t.cdf(x.numpy(), df, loc=0.3, scale=1.7)
        ref_logp = stats.t.logpdf(x.numpy(), df, loc=0.3, scale=1.7)
        assert_close(t.cdf(x), torch.from_numpy(ref_cdf), atol=1e-13, rtol=0)
        assert_close(t.log_prob(x), torch.from_numpy(ref_logp), atol=0, rtol=1e-12)


def test_moons_quadrature_has_converged():
    moons = data.two_moons(noise=0.05)
    x = moons.sample(2000, torch.Generator().manual_seed(0), torch.float64)
    fine = moons.as_mixture(n_nodes=4 * math.ceil(8 / 0.05)).log_prob(x)
    assert_close(moons.log_prob(x), fine, atol=1e-12, rtol=0)


def test_pinwheel_swirl_is_invertible_and_area_preserving():
    pin = data.Pinwheel(scale=1.5)
    y = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    assert_close(pin.untwist(pin.twist(y)), y)
    for yi in y:
        jac = torch.autograd.functional.jacobian(lambda v: pin.twist(v[None])[0], yi)  # (2, 2)
        assert_close(torch.linalg.det(jac), torch.tensor(1.5**2, dtype=torch.float64))


def test_checkerboard_density_is_uniform_on_the_dark_squares():
    board = data.checkerboard()
    x = torch.tensor([[-1.5, -1.5], [-0.5, -1.5], [0.5, 0.5], [2.5, 0.5], [-0.5, 0.5]], dtype=torch.float64)
    expected = torch.tensor([math.log(1 / 8), -math.inf, math.log(1 / 8), -math.inf, -math.inf],
                            dtype=torch.float64)
    assert_close(board.log_prob(x), expected)


def test_rings_radius_follows_the_rice_law():
    # one ring: the radius has density r I0(r R / s^2) exp(-(r^2 + R^2) / 2 s^2) / s^2, mean known
    ring = data.Rings(torch.tensor([1.0]), torch.tensor([1.2]), torch.tensor([0.3]))
    r = torch.linspace(1e-6, 4, 40_001, dtype=torch.float64)
    density_r = 2 * math.pi * r * ring.log_prob(torch.stack([r, torch.zeros_like(r)], 1)).exp()
    assert_close(torch.trapezoid(density_r, r), torch.tensor(1.0, dtype=torch.float64), atol=1e-8, rtol=0)
    x = ring.sample(200_000, torch.Generator().manual_seed(0), torch.float64)
    mean_r = torch.trapezoid(r * density_r, r)
    assert abs(float(x.norm(dim=1).mean() - mean_r)) < 5 * 0.3 / math.sqrt(200_000)


def test_spirals_means_are_one_std_apart_along_the_arms():
    target = data.spirals(n_arms=2, std=0.1)
    arm = target.means[: len(target.means) // 2]  # (m, 2) first arm, in arc-length order
    gaps = arm.diff(dim=0).norm(dim=1)
    assert float(gaps.max()) <= 0.1 + 1e-9 and float(gaps.min()) > 0.09
    assert_close(target.means[len(arm):], -arm)  # the second arm is the first turned by pi


def test_family_bad_inputs_raise():
    with pytest.raises(ValueError, match="weights must lie on the simplex"):
        data.Rings(torch.tensor([0.5, 0.6]), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="radii must be positive"):
        data.Rings(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]), torch.ones(2))
    with pytest.raises(ValueError, match="stds must be positive"):
        data.Rings(torch.tensor([0.5, 0.5]), torch.ones(2), torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="shapes disagree"):
        data.Rings(torch.tensor([1.0]), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="df must be a positive integer"):
        data.StudentT(df=2.5)
    with pytest.raises(ValueError, match="scale must be positive"):
        data.StudentT(scale=0.0)
    with pytest.raises(ValueError, match="n_cells must be an even integer"):
        data.Checkerboard(n_cells=3)
    with pytest.raises(ValueError, match="side must be positive"):
        data.Checkerboard(side=-1.0)
    with pytest.raises(ValueError, match="tangential_std must be positive"):
        data.Pinwheel(tangential_std=0.0)
    with pytest.raises(ValueError, match="n_arms must be a positive integer"):
        data.Pinwheel(n_arms=0)
    with pytest.raises(ValueError, match="must be positive"):
        data.spirals(std=0.0)
    with pytest.raises(ValueError, match=r"shape \(n, 1\)"):
        data.student_t_1d().log_prob(torch.zeros(4, 2))
    for name, target in data.targets(2).items():
        with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
            target.log_prob(torch.zeros(4, 3))
    with pytest.raises(NotImplementedError, match="jitter"):
        data.torchcfm_moons().log_prob(torch.zeros(4, 2))


# ---- torchcfm's targets: their documented conventions -------------------------------------------

def test_torchcfm_8gaussians_uses_sqrt_var_as_the_covariance():
    target = data.torchcfm_8gaussians()
    assert_close(target.means.norm(dim=1), torch.full((8,), 5.0, dtype=torch.float64))
    assert_close(target.stds, torch.full((8, 2), 0.1**0.25, dtype=torch.float64))
    # E|X|^2 = 5^2 + 2 sqrt(0.1) = 25.632 (not 25.2, which a standard deviation sqrt(0.1) would give)
    n = 200_000
    sq = target.sample(n, torch.Generator().manual_seed(0), torch.float64).pow(2).sum(1)
    assert abs(float(sq.mean()) - (25 + 2 * math.sqrt(0.1))) < 5 * float(sq.std()) / math.sqrt(n)


def test_torchcfm_moons_noise_is_uniform_and_diagonal():
    # x = 3 (moon + 0.2 U (1, 1)) - 1: every point is an arc point moved by u (1, 1), 0 <= u < 0.2
    x = data.torchcfm_moons().sample(20_000, torch.Generator().manual_seed(0), torch.float64)
    p = (x + 1) / 3
    found = torch.zeros(len(p), dtype=torch.bool)
    for centre, upper in (((0.0, 0.0), True), ((1.0, 0.5), False)):
        q = p - torch.tensor(centre, dtype=torch.float64)  # |q - u (1, 1)| = 1: a quadratic in u
        b, c = q.sum(1), q.pow(2).sum(1) - 1
        disc = (b**2 - 2 * c).clamp_min(0).sqrt()
        for u in ((b - disc) / 2, (b + disc) / 2):
            on_arc = ((q - u[:, None]).pow(2).sum(1) - 1).abs() < 1e-9
            half = (q[:, 1] - u >= -1e-9) if upper else (q[:, 1] - u <= 1e-9)
            found |= on_arc & half & (u >= -1e-9) & (u < 0.2 + 1e-9)
    assert bool(found.all())
    # the uniform jitter has mean 0.1 (not 0): E x = 3 ((1/2, 1/4) + 0.1 (1, 1)) - 1 = (0.8, 0.05)
    se = 5 * x.std(0) / math.sqrt(len(x))
    assert bool(((x.mean(0) - torch.tensor([0.8, 0.05], dtype=torch.float64)).abs() < se).all())


def test_1d_mixtures_have_the_advertised_shape():
    t = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    for target, modes in ((data.skewed_mixture_1d(), 3), (data.four_mode_1d(), 4)):
        d = target.log_prob(t).exp().diff()
        assert int(((d[:-1] > 0) & (d[1:] <= 0)).sum()) == modes  # local maxima of the density
        assert float(target.weights.min()) > 0.1 - 1e-6 and float(target.stds.max() / target.stds.min()) >= 3
    x = data.skewed_mixture_1d().sample(400_000, torch.Generator().manual_seed(0), torch.float64)
    skewness = ((x - x.mean()) ** 3).mean() / x.std() ** 3
    assert 0.85 < float(skewness) < 0.95  # 0.9017 from the mixture's moments
