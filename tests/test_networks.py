"""Network builders: shapes, conditioning, gradients."""
import math

import pytest
import torch

from minigen import networks


def test_mlp_shapes_and_depth():
    net = networks.mlp(3, 2, hidden=16, depth=4)
    assert net(torch.zeros(5, 3)).shape == (5, 2)
    assert sum(isinstance(m, torch.nn.Linear) for m in net) == 5
    with pytest.raises(ValueError, match="depth"):
        networks.mlp(1, 1, depth=0)


def test_fourier_features_are_sines_and_cosines_of_the_frequencies():
    ff = networks.FourierFeatures(n_freq=4, max_freq=8.0)
    t = torch.tensor([0.0, 0.25])
    out = ff(t)
    assert out.shape == (2, 8)
    torch.testing.assert_close(ff.freq, torch.tensor([1.0, 2.0, 4.0, 8.0]))
    torch.testing.assert_close(out[1, 0], torch.tensor(math.sin(2 * math.pi * 0.25)))
    torch.testing.assert_close(out.pow(2)[:, :4] + out.pow(2)[:, 4:], torch.ones(2, 4))


def test_conditional_mlp_broadcasts_a_scalar_time_and_depends_on_it():
    torch.manual_seed(0)
    net = networks.ConditionalMLP(2, hidden=32, depth=2)
    x = torch.randn(6, 2)
    assert net(x, 0.3).shape == (6, 2)
    torch.testing.assert_close(net(x, 0.3), net(x, torch.full((6,), 0.3)))
    assert not torch.allclose(net(x, 0.1), net(x, 0.9))
    with pytest.raises(ValueError, match="t has 4 entries but x has 6 rows"):
        net(x, torch.zeros(4))


def test_every_parameter_of_a_conditional_mlp_receives_a_gradient():
    net = networks.ConditionalMLP(2, hidden=8, depth=2)
    net(torch.randn(4, 2), torch.rand(4)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
