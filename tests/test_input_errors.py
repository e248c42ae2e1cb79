"""Every public function checks what it is given and names the problem: one test per case.

Shapes and dims, mixed dtypes (the rule: tensors that combine must share a dtype, else a
ValueError naming both), NaN/inf and empty inputs, non-positive scales and step counts, weights
off the simplex, a plain function where a simulator object is expected, duplicated points.
"""
import math

import pytest
import torch

from minigen import diffusion, flow_matching, gan, mmd, ode, ot, sbi, simulators, sourcerer

F64 = torch.float64


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def field(x, t):
    return -x


def critic(x):
    return x.sum(1)


def weights(n, seed=0):
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.1
    return w / w.sum()


# --- shapes and dims ------------------------------------------------------------------------

def test_cfm_loss_refuses_to_broadcast_x1_of_another_dimension():
    with pytest.raises(ValueError, match=r"x0 and x1 must both be \(B, d\) of the same shape.*\(8, 2\) and \(8, 1\)"):
        flow_matching.cfm_loss(field, randn(8, 2), randn(8, 1))


def test_diffusion_loss_asks_for_a_batch_of_points():
    model = diffusion.ScoreNet(diffusion.VPSDE(), dim=1, hidden=8, depth=1).double()
    with pytest.raises(ValueError, match=r"x0 must be a batch of points, shape expected \(B, d\), got \(16,\)"):
        diffusion.diffusion_loss(model, randn(16))


@pytest.mark.parametrize("loss", [
    gan.critic_loss, gan.discriminator_loss, gan.gradient_penalty,
    lambda f, real, fake: gan.wgan_r1_r2_loss(f, real, fake, 1.0),
])
def test_gan_losses_ask_for_batches_of_points(loss):
    with pytest.raises(ValueError, match=r"real must be a batch of points, shape expected \(B, d\), got \(16,\)"):
        loss(critic, randn(16), randn(16, 1))


@pytest.mark.parametrize("loss", [gan.critic_loss, gan.discriminator_loss,
                                  lambda f, real, fake: gan.wgan_r1_r2_loss(f, real, fake, 1.0)])
def test_gan_losses_name_real_and_fake_of_different_dimensions(loss):
    with pytest.raises(ValueError, match=r"same dimension d, got real \(16, 2\) and fake \(16, 3\)"):
        loss(critic, randn(16, 2), randn(16, 3))


@pytest.mark.parametrize("kernel", [mmd.gaussian_kernel, mmd.laplace_kernel, mmd.energy_kernel])
def test_kernels_name_samples_of_different_dimensions(kernel):
    with pytest.raises(ValueError, match=r"same dimension, got 2 and 3 \(shapes \(5, 2\) and \(4, 3\)\)"):
        kernel(randn(5, 2), randn(4, 3))


def test_mmd2_rejects_a_batch_of_matrices():
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\) or \(n,\), got \(5, 2, 2\)"):
        mmd.mmd2(randn(5, 2, 2), randn(5, 2))


def test_mmd_generator_loss_names_a_generator_output_of_the_wrong_dimension():
    generator = torch.nn.Linear(1, 3).double()
    with pytest.raises(ValueError, match=r"generator returned \(6, 3\) for 6 latents; the data batch y is \(6, 2\)"):
        mmd.generator_loss(generator, randn(6, 2), mmd.gaussian_kernel)


# --- mixed dtypes ---------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda a, b: flow_matching.cfm_loss(field, a, b),
    lambda a, b: gan.critic_loss(critic, a, b),
    lambda a, b: gan.gradient_penalty(critic, a, b),
    lambda a, b: mmd.mmd2(a, b),
    lambda a, b: mmd.gaussian_kernel(a, b),
    lambda a, b: ot.sinkhorn_divergence(a, b, 0.1),
], ids=["cfm_loss", "critic_loss", "gradient_penalty", "mmd2", "gaussian_kernel", "sinkhorn_divergence"])
def test_inputs_that_combine_must_share_a_dtype(call):
    with pytest.raises(ValueError, match="is torch.float64 but .* is torch.float32: inputs that combine must share a dtype"):
        call(randn(6, 2), randn(6, 2, dtype=torch.float32))


def test_ot_names_the_dtypes_of_weights_and_cost():
    a, b, M = weights(4), weights(3, 1), randn(4, 3).abs()
    with pytest.raises(ValueError, match="a is torch.float64 but M is torch.float32"):
        ot.emd2(a, b, M.float())


def test_mmd_weights_must_share_the_points_dtype():
    x = randn(4, 2)
    with pytest.raises(ValueError, match="the points is torch.float64 but the weights mu is torch.float32"):
        mmd.mmd2(x, x, mu=torch.full((4,), 0.25))


# --- NaN / inf and empty inputs -------------------------------------------------------------

def test_mmd2_counts_nan_and_inf_entries():
    y = randn(5, 2)
    y[1, 0], y[3, 1] = math.nan, math.inf
    with pytest.raises(ValueError, match=r"y has 2 NaN or infinite entries \(of 10, shape \(5, 2\)\)"):
        mmd.mmd2(randn(5, 2), y)


def test_mmd2_rejects_an_empty_sample():
    with pytest.raises(ValueError, match=r"x is empty, shape \(0, 2\)"):
        mmd.mmd2(randn(0, 2), randn(5, 2))


def test_kl_entropy_counts_nan_entries():
    x = randn(50, 2)
    x[7, 1] = math.nan
    with pytest.raises(ValueError, match="x has 1 NaN or infinite entries"):
        sourcerer.kl_entropy(x)


def test_kl_entropy_rejects_an_empty_sample():
    with pytest.raises(ValueError, match=r"n >= 2 and d >= 1, got \(0, 3\)"):
        sourcerer.kl_entropy(randn(0, 3))


@pytest.mark.parametrize("solver", ["emd", "emd2", "sinkhorn_scaling", "sinkhorn_log"])
def test_ot_solvers_reject_a_cost_with_nan(solver):
    M = randn(4, 3).abs()
    M[2, 2] = math.nan
    args = (weights(4), weights(3, 1), M) + ((0.1,) if solver.startswith("sinkhorn") else ())
    with pytest.raises(ValueError, match="the cost M has 1 NaN or infinite entries"):
        getattr(ot, solver)(*args)


def test_ot_solvers_reject_empty_weights():
    with pytest.raises(ValueError, match=r"a must be a non-empty vector of weights \(n,\), got shape \(0,\)"):
        ot.emd(torch.zeros(0, dtype=F64), weights(3), torch.zeros(0, 3, dtype=F64))


def test_sinkhorn_divergence_rejects_points_with_inf():
    x = randn(5, 2)
    x[0, 0] = math.inf
    with pytest.raises(ValueError, match="x has 1 NaN or infinite entries"):
        ot.sinkhorn_divergence(x, randn(4, 2), 0.1)


# --- non-positive scales and step counts ----------------------------------------------------

@pytest.mark.parametrize("bandwidth", [0.0, -1.0, math.nan, [1.0, 0.0]])
def test_kernels_reject_non_positive_bandwidths(bandwidth):
    for kernel in (mmd.gaussian_kernel, mmd.laplace_kernel):
        with pytest.raises(ValueError, match="bandwidths must be positive"):
            kernel(randn(3, 2), randn(3, 2), bandwidth)


@pytest.mark.parametrize("eps", [0.0, -0.1, math.nan, math.inf])
def test_sinkhorn_rejects_non_positive_epsilons(eps):
    a, b, M = weights(4), weights(3, 1), randn(4, 3).abs()
    for solver in (ot.sinkhorn_scaling, ot.sinkhorn_log, ot.entropic_ot):
        with pytest.raises(ValueError, match="eps must be positive and finite"):
            solver(a, b, M, eps)
    with pytest.raises(ValueError, match="eps must be positive and finite"):
        ot.sinkhorn_divergence(randn(4, 2), randn(3, 2), eps)


def test_sinkhorn_rejects_zero_iterations():
    with pytest.raises(ValueError, match="n_iter must be >= 1"):
        ot.sinkhorn_scaling(weights(4), weights(3, 1), randn(4, 3).abs(), 0.1, n_iter=0)


@pytest.mark.parametrize("n_steps", [0, -3, 2.5])
def test_samplers_reject_step_counts_that_are_not_positive_integers(n_steps):
    sde, x = diffusion.VPSDE(), randn(4, 2)
    calls = {
        "odeint": lambda: ode.odeint(field, x, 0.0, 1.0, n_steps),
        "flow_matching.sample": lambda: flow_matching.sample(field, x, n_steps),
        "reverse_sde_sample": lambda: diffusion.reverse_sde_sample(field, sde, x, n_steps),
        "ode_sample": lambda: diffusion.ode_sample(field, sde, x, n_steps),
        "langevin": lambda: diffusion.langevin(lambda y: -y, x, 0.01, n_steps),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"n_steps must be >= 1 \(an integer\)"):
            call()


@pytest.mark.parametrize("step_size", [0.0, -0.01])
def test_langevin_rejects_non_positive_step_sizes(step_size):
    with pytest.raises(ValueError, match="step_size must be positive and finite"):
        diffusion.langevin(lambda y: -y, randn(4, 2), step_size, 10)


def test_dsm_loss_rejects_a_non_positive_noise_level():
    with pytest.raises(ValueError, match="sigma must be positive and finite, got 0.0"):
        diffusion.dsm_loss(lambda y: -y, randn(4, 2), 0.0)


# --- weights off the simplex ----------------------------------------------------------------

@pytest.mark.parametrize("solver", ["emd", "emd2", "sinkhorn_scaling", "sinkhorn_log"])
def test_ot_solvers_name_weights_that_do_not_sum_to_one(solver):
    M = randn(4, 3).abs()
    extra = (0.1,) if solver.startswith("sinkhorn") else ()
    with pytest.raises(ValueError, match="a and b sum to 0.9, expected 1"):
        getattr(ot, solver)(0.9 * weights(4), 0.9 * weights(3, 1), M, *extra)
    with pytest.raises(ValueError, match="a and b must have equal mass: a sums to 1, b sums to 0.9"):
        getattr(ot, solver)(weights(4), 0.9 * weights(3, 1), M, *extra)


@pytest.mark.parametrize("solver", ["emd", "emd2", "sinkhorn_log"])
def test_ot_solvers_name_negative_weights(solver):
    b = torch.tensor([0.7, 0.5, -0.2], dtype=F64)  # sums to 1
    extra = (0.1,) if solver.startswith("sinkhorn") else ()
    with pytest.raises(ValueError, match="b has 1 negative entries"):
        getattr(ot, solver)(weights(4), b, randn(4, 3).abs(), *extra)


@pytest.mark.parametrize("solver", ["unmix", "unmix_cutting_planes", "unmix_lp"])
def test_unmixing_names_the_weights_off_the_simplex(solver):
    H = torch.stack([weights(5, 1), weights(5, 2)], 1)  # (5, 2)
    b, M, w0 = weights(4, 3), randn(5, 4).abs(), torch.tensor([0.5, 0.5], dtype=F64)
    call = getattr(ot, solver)
    args = (lambda H, b, w0: (H, b, M)) if solver == "unmix_lp" else (lambda H, b, w0: (H, b, M, w0))
    bad_H = H.clone()
    bad_H[:, 1] *= 0.9
    with pytest.raises(ValueError, match="column 1 of H sums to 0.9, expected 1"):
        call(*args(bad_H, b, w0))
    with pytest.raises(ValueError, match="b sums to 1.1, expected 1"):
        call(*args(H, 1.1 * b, w0))
    if solver != "unmix_lp":
        with pytest.raises(ValueError, match="w0 has 1 negative entries"):
            call(*args(H, b, torch.tensor([1.5, -0.5], dtype=F64)))


# --- a plain function where a simulator object is expected ----------------------------------

def test_estimate_source_names_the_simulator_class_for_a_plain_function():
    def f(theta):
        return theta + 1

    with pytest.raises(TypeError, match=r"must be a minigen.simulators.Simulator.*got function f.*subclass Simulator"):
        sourcerer.estimate_source(f, randn(10, 2), None, n_steps=2)


def test_ratio_training_set_names_the_methods_a_plain_function_lacks():
    def f(theta, generator=None):
        return theta[:, None]

    with pytest.raises(TypeError, match="like minigen.simulators.SmearedExponential.*lacks simulate_joint, joint_log_ratio, joint_score"):
        sbi.ratio_training_set(f, torch.full((4,), 0.8, dtype=F64), 1.0)


def test_a_simulator_subclass_wrapping_a_function_is_accepted():
    class Shift(simulators.Simulator):
        name, dim_theta, dim_x = "shift", 2, 2
        low, high = torch.full((2,), -1.0), torch.full((2,), 1.0)

        def simulate(self, theta, generator):
            return theta + 0.1 * torch.randn(theta.shape, generator=generator)

    g = torch.Generator().manual_seed(0)
    source, result = sourcerer.estimate_source(Shift(), torch.rand(64, 2, generator=g), None,
                                               n_steps=2, hidden=8, depth=1, batch_size=32,
                                               n_projections=8)
    assert result.losses.shape == (2, 1) and torch.isfinite(result.losses).all()


# --- duplicated points in kl_entropy --------------------------------------------------------

def test_kl_entropy_warns_about_duplicates_and_returns_the_documented_clamped_value():
    x = randn(40, 2)
    dup = x.clone()
    dup[5] = dup[9]
    with pytest.warns(RuntimeWarning, match="2 of 40 points have an exact duplicate"):
        h = sourcerer.kl_entropy(dup)
    assert math.isfinite(float(h))
    # the documented value: each duplicated point's log-distance is log(1e-30)
    nearest = torch.cdist(dup, dup).fill_diagonal_(math.inf).min(1).values
    log_eps = nearest.clamp_min(1e-30).log()
    assert log_eps[5] == log_eps[9] == math.log(1e-30)
    expected = (2 * log_eps.mean() + math.log(math.pi) - math.lgamma(2)
                + float(torch.special.digamma(torch.tensor(40.0, dtype=F64)) - torch.special.digamma(torch.tensor(1.0, dtype=F64))))
    torch.testing.assert_close(h, expected)
