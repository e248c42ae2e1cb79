"""Identities of minigen.mmd: kernels, the kernel scalar product, MMD^2 and the kernel likelihood."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import mmd, networks

F64 = torch.float64


def _sample(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64) + shift


KERNELS = {
    "gaussian": functools.partial(mmd.gaussian_kernel, bandwidth=0.7),
    "gaussian-multiscale": functools.partial(mmd.gaussian_kernel, bandwidth=[0.1, 0.5, 2.0]),
    "laplace": functools.partial(mmd.laplace_kernel, bandwidth=0.7),
    "energy": mmd.energy_kernel,
    "imq": functools.partial(mmd.imq_kernel, bandwidth=0.7),
}


@pytest.mark.parametrize("name", KERNELS)
def test_biased_mmd2_is_nonnegative_and_zero_for_identical_samples(name):
    k = KERNELS[name]
    for seed in range(5):
        x, y = _sample(30, 2, seed), _sample(20, 2, seed + 10, shift=0.3 * seed)
        assert mmd.mmd2(x, y, k) >= -1e-12
    x = _sample(25, 3, 0)
    assert_close(mmd.mmd2(x, x.clone(), k), torch.tensor(0.0, dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", KERNELS)
def test_unbiased_mmd2_equals_brute_force_double_loop(name):
    k = KERNELS[name]
    x, y = _sample(7, 2, 1), _sample(5, 2, 2, shift=0.5)
    kk = lambda a, b: k(a[None], b[None])[0, 0]  # noqa: E731
    n, m = len(x), len(y)
    xx = sum(kk(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(kk(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kk(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    assert_close(mmd.mmd2(x, y, k, unbiased=True), xx + yy - 2 * xy)


def test_kernel_closed_forms_and_multiscale_average():
    x, y = _sample(4, 3, 0), _sample(6, 3, 1)
    dist = torch.cdist(x, y)
    assert_close(mmd.gaussian_kernel(x, y, 0.8), torch.exp(-dist**2 / (2 * 0.8**2)))
    assert_close(mmd.laplace_kernel(x, y, 0.8), torch.exp(-dist / 0.8))
    assert_close(mmd.energy_kernel(x, y), -dist)
    assert_close(mmd.imq_kernel(x, y, 0.8), 1 / torch.sqrt(1 + dist**2 / 0.8**2))
    multi = (mmd.gaussian_kernel(x, y, 0.3) + mmd.gaussian_kernel(x, y, 3.0)) / 2
    assert_close(mmd.gaussian_kernel(x, y, [0.3, 3.0]), multi)


@pytest.mark.parametrize("name", ["gaussian", "gaussian-multiscale", "laplace", "imq"])
def test_gram_matrix_is_symmetric_positive_semidefinite_with_unit_diagonal(name):
    x = _sample(40, 2, 3)
    gram = KERNELS[name](x, x)
    assert_close(gram, gram.T)
    assert_close(gram.diagonal(), torch.ones(40, dtype=F64))
    assert torch.linalg.eigvalsh(gram).min() > -1e-10


def test_energy_mmd2_is_energy_distance_and_twice_cramer_in_1d():
    x, y = _sample(9, 1, 4), _sample(13, 1, 5, shift=0.4)
    e = 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()
    assert_close(mmd.mmd2(x, y, mmd.energy_kernel), e)
    t = torch.cat([x, y])[:, 0].sort().values  # 1D: energy distance = 2 int (F - G)^2 dt
    F = (x[:, 0][None] <= t[:-1, None]).double().mean(1)
    G = (y[:, 0][None] <= t[:-1, None]).double().mean(1)
    assert_close(mmd.mmd2(x, y, mmd.energy_kernel), 2 * ((F - G) ** 2 * t.diff()).sum())


def test_kernel_product_is_bilinear_and_weighted_mmd2_expands_by_bilinearity():
    k = KERNELS["gaussian"]
    x, y = _sample(6, 2, 6), _sample(4, 2, 7)
    a1, a2 = torch.rand(6, dtype=F64), torch.rand(6, dtype=F64)
    b = torch.rand(4, dtype=F64)
    lhs = mmd.kernel_product(x, y, k, 2 * a1 - 3 * a2, b)
    assert_close(lhs, 2 * mmd.kernel_product(x, y, k, a1, b) - 3 * mmd.kernel_product(x, y, k, a2, b))
    assert_close(mmd.kernel_product(x, y, k), k(x, y).mean())
    mu, nu = a1 / a1.sum(), b / b.sum()
    expanded = (mmd.kernel_product(x, x, k, mu, mu) - 2 * mmd.kernel_product(x, y, k, mu, nu)
                + mmd.kernel_product(y, y, k, nu, nu))
    assert_close(mmd.mmd2(x, y, k, mu=mu, nu=nu), expanded)
    assert_close(mmd.mmd2(x, y, k, mu=torch.full((6,), 1 / 6, dtype=F64)), mmd.mmd2(x, y, k))


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_mmd2_gradient_is_twice_the_weighted_field_gradient(name):
    k = KERNELS[name]
    x, y = _sample(5, 2, 8).requires_grad_(), _sample(7, 2, 9)
    mu = torch.softmax(torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(0)), 0)
    (grad_mmd,) = torch.autograd.grad(mmd.mmd2(x, y, k, mu=mu), x)
    p = x.detach().clone().requires_grad_()
    (grad_field,) = torch.autograd.grad(mmd.kernel_field(p, x.detach(), y, k, mu=mu).sum(), p)
    assert_close(grad_mmd, 2 * mu[:, None] * grad_field)


def test_kernel_field_integrates_to_kernel_products():
    k = KERNELS["gaussian"]
    x, y = _sample(5, 2, 10), _sample(7, 2, 11)
    field_at_x = mmd.kernel_field(x, x, y, k)  # <mu, field> = <mu, mu>_k - <mu, nu>_k
    assert_close(field_at_x.mean(), mmd.kernel_product(x, x, k) - mmd.kernel_product(x, y, k))


def test_kernel_nll_equals_naive_where_finite_and_stays_finite_where_it_underflows():
    x, y = _sample(30, 2, 12), _sample(20, 2, 13, shift=0.2)
    sigma = 0.5
    naive = -torch.log((torch.exp(-torch.cdist(y, x) ** 2 / (2 * sigma**2))
                        / (2 * math.pi * sigma**2)).mean(1)).mean()
    assert_close(mmd.kernel_nll(x, y, sigma), naive)
    far, sigma = x.float(), 0.01  # float32, narrow kernel, data 5 units away: exp underflows to 0
    y_far = (y + 5).float()
    k32 = torch.exp(-torch.cdist(y_far, far) ** 2 / (2 * sigma**2))
    assert (k32 == 0).all()
    value = mmd.kernel_nll(far, y_far, sigma)
    assert torch.isfinite(value)
    assert_close(value.double(), mmd.kernel_nll(far.double(), y_far.double(), sigma), rtol=1e-5, atol=0)


def test_kernel_nll_of_one_point_is_the_gaussian_log_density():
    x, y = torch.zeros(1, 2, dtype=F64), torch.tensor([[0.3, -0.4]], dtype=F64)
    expected = 0.25 / (2 * 0.5**2) + math.log(2 * math.pi * 0.5**2)
    assert_close(mmd.kernel_nll(x, y, 0.5), torch.tensor(expected, dtype=F64))


def test_generator_loss_is_the_unbiased_mmd2_of_pushed_forward_noise():
    gen = networks.mlp(1, 1, hidden=8, depth=1).double()
    y = _sample(16, 1, 14)
    torch.manual_seed(0)
    loss = mmd.generator_loss(gen, y, KERNELS["gaussian"])
    torch.manual_seed(0)
    z = torch.randn(16, 1, dtype=F64)
    assert_close(loss, mmd.mmd2(gen(z), y, KERNELS["gaussian"], unbiased=True))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


def test_bad_inputs_raise_clear_errors():
    x = _sample(4, 2, 0)
    with pytest.raises(ValueError, match="same dimension"):
        mmd.mmd2(x, _sample(4, 3, 1))
    with pytest.raises(ValueError, match="uniform weights only"):
        mmd.mmd2(x, x, unbiased=True, mu=torch.full((4,), 0.25, dtype=F64))
    with pytest.raises(ValueError, match=r"weights mu must have shape \(4,\)"):
        mmd.kernel_product(x, x, mu=torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="bandwidths must be positive"):
        mmd.gaussian_kernel(x, x, [0.5, -1.0])
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        mmd.kernel_nll(x, x, 0.0)
    with pytest.raises(ValueError, match="at least 2 points"):
        mmd.mmd2(x[:1], x, unbiased=True)


def test_curve_mixture_points_lie_on_the_curve_and_weights_carry_the_probability():
    model = mmd.CurveMixture(coef=(0.5, -0.2, 0.8), means=(-1.0, 1.0), stds=(0.3, 0.2), weight=0.3)
    model = model.double()
    x, mu = model(torch.randn(10, dtype=F64, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (20, 2) and mu.shape == (20,)
    assert_close(x[:, 1], 0.5 - 0.2 * x[:, 0] + 0.8 * x[:, 0] ** 2)
    assert_close(mu[:10].sum(), torch.tensor(0.3, dtype=F64))
    assert_close(mu.sum(), torch.tensor(1.0, dtype=F64))
    y = model.sample(4_000, torch.Generator().manual_seed(1))
    assert abs(float((y[:, 0] < 0).double().mean()) - 0.3) < 0.03  # the left component: t < 0


def test_curve_mixture_every_parameter_receives_a_gradient_through_both_divergences():
    y = mmd.CurveMixture(coef=(0.2, 0.0, -0.5), weight=0.7).sample(50, torch.Generator().manual_seed(2))
    eps = torch.randn(20, generator=torch.Generator().manual_seed(3))
    for loss in (lambda x, mu: mmd.mmd2(x, y, KERNELS["gaussian"], mu=mu),
                 lambda x, mu: mmd.kernel_nll(x, y, 0.3, mu=mu)):
        model = mmd.CurveMixture()
        loss(*model(eps)).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="0 < weight < 1"):
        mmd.CurveMixture(weight=1.0)


@pytest.mark.parametrize("d", [1, 2])
def test_gaussian_kernel_is_the_autocorrelation_of_the_blur_and_mmd_is_an_l2_distance(d):
    sigma, h = 0.7, 0.05 if d == 1 else 0.08
    axis = torch.arange(-8.0, 8.0 + h / 2, h, dtype=F64)
    grid = torch.stack(torch.meshgrid(*[axis] * d, indexing="ij"), -1).reshape(-1, d)  # (G, d)
    # k(z) = int g(z - p) g(p) dp, on a grid, at a few lags z
    lags = _sample(5, d, 8)
    g0 = mmd.gaussian_blur(grid, torch.zeros(1, d, dtype=F64), sigma)  # (G,)
    conv = torch.stack([(mmd.gaussian_blur(grid, z[None], sigma) * g0).sum() * h**d for z in lags])
    assert_close(conv, mmd.gaussian_kernel(lags, torch.zeros(1, d, dtype=F64), sigma)[:, 0], rtol=0, atol=1e-10)
    # MMD^2 = || g * mu - g * nu ||^2_{L2}, weights included
    x, y = _sample(7, d, 9), _sample(5, d, 10, shift=0.5)
    mu = torch.rand(7, dtype=F64, generator=torch.Generator().manual_seed(11)) + 0.2
    mu = mu / mu.sum()
    diff = mmd.gaussian_blur(grid, x, sigma, mu) - mmd.gaussian_blur(grid, y, sigma)
    k = functools.partial(mmd.gaussian_kernel, bandwidth=sigma)
    assert_close((diff**2).sum() * h**d, mmd.mmd2(x, y, k, mu=mu), rtol=0, atol=1e-10)
