"""Tests of diffnotes.networks: the parameterisation adapter, the MLPs, fixing labels."""

import pytest
import torch

from diffnotes.networks import (
    ConditionalScoreMLP,
    ScoreAdapter,
    ScoreMLP,
    SinusoidalEmbedding,
    as_score,
    with_label,
)
from diffnotes.samplers import euler_maruyama, time_grid
from diffnotes.sde import ConstantVP, CosineVP, LinearVP
from diffnotes.targets import GaussianMixture


def _target(sde):
    return GaussianMixture([0.5, 0.25, 0.25], [[-1.5, 0.5], [2.0, 0.0], [0.0, -2.0]],
                           [[0.4, 0.2], [0.3, 0.3], [0.5, 0.1]], sde)


def _oracles(target, sde):
    """Exact noise, data and velocity predictions of the target, computed from its exact score."""

    def eps(x, t):
        return -torch.sqrt(sde.h(t))[:, None] * target.score(x, t)

    def x0(x, t):
        return (x + sde.h(t)[:, None] * target.score(x, t)) / sde.alpha(t)[:, None]

    def v(x, t):
        return sde.alpha(t)[:, None] * eps(x, t) - torch.sqrt(sde.h(t))[:, None] * x0(x, t)

    return {"eps": eps, "x0": x0, "v": v, "score": target.score}


@pytest.mark.parametrize("sde", [ConstantVP(T=10.0), LinearVP(), CosineVP()], ids=repr)
def test_as_score_recovers_the_exact_score(sde):
    target = _target(sde)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    t = sde.T * (0.005 + 0.995 * torch.rand(200, generator=g, dtype=torch.float64))
    exact = target.score(x, t)
    for prediction, oracle in _oracles(target, sde).items():
        s = as_score(oracle, prediction, sde)
        assert s(x, t).dtype == torch.float64
        assert torch.allclose(s(x, t), exact, rtol=0, atol=1e-10 * (1 + float(exact.abs().max()))), prediction
        t_one = float(t[0])
        assert torch.allclose(s(x, t_one), target.score(x, t_one), atol=1e-10 * (1 + float(exact.abs().max())))


def test_as_score_detects_a_wrong_parameterisation():
    """The check above can fail: reading an eps-prediction as an x0-prediction gives a different score."""
    sde = ConstantVP()
    target = _target(sde)
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.full((50,), 0.7, dtype=torch.float64)
    wrong = as_score(_oracles(target, sde)["eps"], "x0", sde)(x, t)
    assert (wrong - target.score(x, t)).abs().max() > 0.1


def test_as_score_validation():
    sde = ConstantVP()
    f = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="prediction"):
        as_score(f, "noise", sde)
    with pytest.raises(TypeError):
        as_score(3, "eps", sde)
    with pytest.raises(ValueError, match=r"\(0, T\]"):
        as_score(f, "eps", sde)(torch.zeros(3, 2, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match="shaped like x"):
        as_score(lambda x, t: x[:, :1], "eps", sde)(torch.zeros(3, 2, dtype=torch.float64), 1.0)
    with pytest.raises(TypeError, match="score\\(x, t\\)"):
        as_score(f, "eps", sde)(torch.zeros(3, 2), 1, 1.0)


def test_score_mlp_dtype_device_and_times():
    torch.manual_seed(0)
    net = ScoreMLP(3, hidden=16, depth=2)
    x = torch.randn(5, 3, dtype=torch.float64)
    out = net(x, 0.5)
    assert out.shape == (5, 3) and out.dtype == torch.float64  # computed in float32, returned like x
    assert torch.allclose(net(x, 0.5), net(x, torch.full((5,), 0.5)), atol=0)
    assert torch.allclose(net(x, torch.full((5, 1), 0.5)), out, atol=0)
    net64 = ScoreMLP(3, hidden=16, depth=2).double()
    assert net64(x.float(), 0.5).dtype == torch.float32
    assert not torch.allclose(net(x, 0.1), net(x, 1.0))  # the time matters
    with pytest.raises(ValueError, match="t > 0"):
        net(x, 0.0)
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(5, 2), 0.5)
    with pytest.raises(ValueError, match="one entry per row"):
        net(x, torch.ones(4))
    with pytest.raises(ValueError):
        ScoreMLP(0)
    lin = ScoreMLP(2, hidden=8, depth=1, time_embedding="linear")
    assert lin(torch.zeros(2, 2), 0.0).shape == (2, 2)  # t = 0 is fine for a linear-time embedding
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(7)


def test_adapter_is_a_trainable_module():
    net = ScoreMLP(2, hidden=8, depth=1)
    s = as_score(net, "v", ConstantVP())
    assert isinstance(s, ScoreAdapter) and isinstance(s, torch.nn.Module)
    assert len(list(s.parameters())) == len(list(net.parameters()))
    s(torch.randn(4, 2), torch.rand(4) + 0.1).pow(2).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_samplers_accept_adapted_float32_networks():
    """Samplers never special-case a parameterisation: an eps-network in float32 runs under no_grad in float64."""
    sde = ConstantVP(T=5.0)
    torch.manual_seed(0)
    s = as_score(ScoreMLP(2, hidden=16, depth=1), "eps", sde)
    times = time_grid(sde, 1e-2, 8)
    out = euler_maruyama(s, (10, 2), times, sde=sde, generator=torch.Generator().manual_seed(0))
    assert out.shape == (10, 2) and out.dtype == torch.float64 and torch.isfinite(out).all()


def test_conditional_network_and_labels():
    torch.manual_seed(0)
    net = ConditionalScoreMLP(2, n_classes=3, hidden=16, depth=1)
    assert net.null_label == 3
    x = torch.randn(6, 2, dtype=torch.float64)
    for y in (0, 2, 3, torch.tensor([0, 1, 2, 3, 0, 1])):
        assert net(x, y, 0.5).shape == (6, 2)
    assert not torch.allclose(net(x, 0, 0.5), net(x, 1, 0.5))
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="labels must lie"):
            net(x, bad, 0.5)
    with pytest.raises(TypeError, match="integers"):
        net(x, torch.zeros(6), 0.5)

    s = as_score(net, "eps", ConstantVP())
    assert s.conditional and s.n_classes == 3 and s.null_label == 3
    assert torch.allclose(s(x, 1, 0.5), -net(x, 1, 0.5) / ConstantVP().sigma(0.5))
    s1 = with_label(s, 1)
    assert torch.allclose(s1(x, 0.5), s(x, 1, 0.5))
    s_null = with_label(s, s.null_label)
    assert torch.allclose(s_null(x, torch.full((6,), 0.5)), s(x, 3, 0.5))
    per_row = with_label(s, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert torch.allclose(per_row(x, 0.5)[1], s(x, 1, 0.5)[1])
    with pytest.raises(ValueError, match="labels must be"):
        with_label(s, 5)
    with pytest.raises(ValueError, match="labels must be"):
        with_label(s, -1)
    with pytest.raises(TypeError):
        with_label(s, 1.5)
    with pytest.raises(ValueError, match="one label per row"):
        per_row(torch.randn(4, 2, dtype=torch.float64), 0.5)


def test_conditional_adapter_of_exact_scores():
    sde = ConstantVP()
    target = _target(sde)
    s = as_score(target.conditional_score, "score", sde, conditional=True)
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(with_label(s, 2)(x, 0.3), target.conditional_score(x, 2, 0.3), atol=0)
