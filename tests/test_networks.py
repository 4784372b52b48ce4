"""Tests of diffnotes.networks: the parameterisation adapter, the MLPs, fixing labels, the structured networks."""

import functools

import numpy as np
import pytest
import torch

from diffnotes.estimators import subspace_angle
from diffnotes.losses import dsm_loss, esm_loss
from diffnotes.networks import (
    ConditionalScoreMLP,
    EncoderDecoderScore,
    ScoreAdapter,
    ScoreMLP,
    SinusoidalEmbedding,
    UNet,
    as_score,
    n_parameters,
    with_label,
)
from diffnotes.samplers import ddim, euler_maruyama, time_grid
from diffnotes.sde import ConstantVP, CosineVP, LinearVP
from diffnotes.targets import GaussianMixture, SubspaceMixture, orthonormal_basis
from diffnotes.training import train


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


# -- the encoder-decoder network of the review's Fig. 5 ----------------------------------------------------------
def _subspace_target(sde, D=12, d=2, seed=0):
    A = orthonormal_basis(D, d, torch.Generator().manual_seed(seed))
    return SubspaceMixture(A, [0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [[0.3, 0.2], [0.5, 0.4]], sde=sde)


@pytest.mark.parametrize("sde", [ConstantVP(T=10.0), LinearVP()], ids=repr)
def test_encoder_decoder_with_the_true_subspace_is_the_exact_score(sde):
    """V = A and f(z, t) = z + h(t) grad log p^ld_t(z) give the exact score of the subspace mixture."""
    target = _subspace_target(sde)
    lat = target.latent
    g = torch.Generator().manual_seed(1)
    f_form = EncoderDecoderScore(12, 2, sde=sde, basis=target.A,
                                 latent=lambda z, t: z + sde.h(t)[:, None] * lat.score(z, t))
    score_form = EncoderDecoderScore(12, 2, sde=sde, basis=target.A, latent=lat.score, latent_output="score")
    assert n_parameters(f_form) == 0 and not f_form.learn_basis
    for frac in (1e-3, 0.05, 0.3, 1.0):
        t = frac * sde.T
        x = target.sample_marginal(300, t, g)
        exact = target.score(x, t)
        tol = 1e-10 * (1 + float(exact.abs().max()))
        for net in (f_form, score_form, as_score(f_form, "score", sde)):
            out = net(x, t)
            assert out.dtype == torch.float64
            assert (out - exact).abs().max() <= tol, (t, net)
        assert (f_form(x, torch.full((300,), t, dtype=torch.float64)) - exact).abs().max() <= tol
    # the check can fail: a slightly rotated basis gives a visibly different score
    B = orthonormal_basis(12, 2, torch.Generator().manual_seed(5))
    rotated = torch.linalg.qr(target.A + 0.05 * B).Q
    wrong = EncoderDecoderScore(12, 2, sde=sde, basis=rotated,
                                latent=lambda z, t: z + sde.h(t)[:, None] * lat.score(z, t))
    x = target.sample_marginal(300, 0.1 * sde.T, g)
    assert (wrong(x, 0.1 * sde.T) - target.score(x, 0.1 * sde.T)).abs().max() > 0.1


def test_encoder_decoder_validation():
    sde = ConstantVP(T=5.0)
    A = orthonormal_basis(6, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="cannot exceed"):
        EncoderDecoderScore(3, 4)
    with pytest.raises(ValueError, match="positive integer"):
        EncoderDecoderScore(0, 1)
    with pytest.raises(ValueError, match="orthonormal"):
        EncoderDecoderScore(6, 2, basis=2 * A)
    with pytest.raises(ValueError, match=r"shape \(D, d\) = \(6, 2\)"):
        EncoderDecoderScore(6, 2, basis=A[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        EncoderDecoderScore(6, 2, basis=torch.full((6, 2), float("nan")))
    with pytest.raises(ValueError, match="learn_basis=False"):
        EncoderDecoderScore(6, 2, learn_basis=False)
    with pytest.raises(ValueError, match="latent_output"):
        EncoderDecoderScore(6, 2, latent_output="eps")
    with pytest.raises(TypeError, match="callable"):
        EncoderDecoderScore(6, 2, latent=3)
    with pytest.raises(TypeError, match="VPSDE"):
        EncoderDecoderScore(6, 2, sde="vp")
    net = EncoderDecoderScore(6, 2, sde=sde, hidden=8, depth=1)
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"\(0, T\]"):
        net(x, 0.0)
    with pytest.raises(ValueError, match=r"\(0, T\]"):
        net(x, 6.0)
    with pytest.raises(ValueError, match=r"shape \(n, 6\)"):
        net(torch.randn(4, 5), 1.0)
    with pytest.raises(TypeError, match="torch tensor"):
        net(np.zeros((4, 6)), 1.0)
    with pytest.raises(ValueError, match="one entry per row"):
        net(x, torch.ones(3))
    bad = EncoderDecoderScore(6, 2, basis=A, latent=lambda z, t: z[:, :1])
    with pytest.raises(ValueError, match=r"latent network must return a tensor of shape \(4, 2\)"):
        bad(x.double(), 1.0)


def test_encoder_decoder_dtype_and_fixed_basis():
    torch.manual_seed(0)
    A = orthonormal_basis(6, 2, torch.Generator().manual_seed(0))
    fixed = EncoderDecoderScore(6, 2, basis=A, hidden=8, depth=1)
    assert not fixed.learn_basis and "fixed_basis" in dict(fixed.named_buffers())
    assert all(p.shape != (6, 2) for p in fixed.parameters())  # the basis is not trained
    x = torch.randn(5, 6, dtype=torch.float64)
    out = fixed(x, 0.5)
    assert out.shape == (5, 6) and out.dtype == torch.float64  # computed in float32, returned like x
    assert torch.allclose(fixed.basis, A)
    assert not torch.allclose(fixed(x, 0.1), fixed(x, 1.0) * ConstantVP().h(1.0) / ConstantVP().h(0.1))
    learned = EncoderDecoderScore(6, 2, basis=A, learn_basis=True, hidden=8, depth=1)
    assert learned.learn_basis and torch.allclose(learned.basis.double(), A, atol=1e-6)
    same = [EncoderDecoderScore(6, 2, generator=torch.Generator().manual_seed(3)).basis for _ in range(2)]
    assert torch.equal(same[0], same[1])  # the random start basis comes from the generator
    assert n_parameters(learned) == n_parameters(fixed) + 12


def test_learned_basis_stays_orthonormal_under_optimisation():
    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        net = EncoderDecoderScore(10, 3, hidden=8, depth=1).to(dtype)
        opt = torch.optim.Adam(net.parameters(), lr=0.3)  # large steps: the raw weight moves a lot
        x = torch.randn(64, 10, dtype=dtype)
        start = net.basis
        for _ in range(20):
            opt.zero_grad()
            net(x, torch.rand(64, dtype=dtype) + 0.05).pow(2).mean().backward()
            opt.step()
        V = net.basis
        assert V.dtype == dtype and V.shape == (10, 3)
        assert (V.T @ V - torch.eye(3, dtype=dtype)).abs().max() < tol
        assert (V - start).abs().max() > 0.05  # it did move


@pytest.mark.parametrize("latent_output, loss", [("score", "dsm"), ("score", "esm"), ("f", "dsm")])
def test_training_finds_the_subspace(latent_output, loss):
    """A few hundred steps on subspace data bring the basis close to the true subspace.

    The score form starts from a random basis; the direct form (Chen et al.'s f) can stall on a plateau from a
    random start (book chapter *Score approximation*), so it starts from a basis tilted away from the true one.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sde = ConstantVP()
    target = _subspace_target(sde, D=10, d=2, seed=1)
    x = target.sample(1024, g)
    if latent_output == "score":
        basis = None
    else:
        basis = torch.linalg.qr(target.A + 0.4 * orthonormal_basis(10, 2, g)).Q
    net = EncoderDecoderScore(10, 2, sde=sde, hidden=16, depth=2, latent_output=latent_output, basis=basis,
                              learn_basis=True, generator=g)
    start = subspace_angle(net.basis.double(), target.A)
    if loss == "dsm":
        loss_fn = functools.partial(dsm_loss, t0=1e-2, sde=sde)
    else:
        def loss_fn(model, batch, generator):
            return esm_loss(model, target.score, batch, 1e-2, sde=sde, generator=generator)
    train(net, loss_fn, x, steps=300, batch_size=128, lr=1e-2, generator=g, progress=False)
    end = subspace_angle(net.basis.double(), target.A)
    # a random 2-plane in R^10 is far from the true one (about sqrt(2d(1 - d/D)) = 1.8)
    assert start > (1.0 if basis is None else 0.4)
    assert end < 0.2, (start, end)


# -- the U-Net of the review's Fig. 4 --------------------------------------------------------------------------
def test_unet_shapes_time_and_architecture():
    torch.manual_seed(0)
    net = UNet((2, 8, 4), channels=(8, 16), groups=4)
    assert net.dim == 64
    x = torch.randn(5, 64, dtype=torch.float64)
    out = net(x, 0.5)
    assert out.shape == (5, 64) and out.dtype == torch.float64
    assert torch.allclose(net(x, torch.full((5,), 0.5)), out, atol=0)
    assert not torch.allclose(net(x, 0.1), net(x, 2.0))  # the time matters
    assert not torch.allclose(net(x[:1], 0.5), net(x[1:2], 0.5))
    # every output pixel depends on the input (the receptive field covers the image)
    xi = torch.randn(1, 64, requires_grad=True)
    net(xi, 0.5)[0, 0].backward()
    assert (xi.grad != 0).sum() > 32
    stages = net.architecture()
    assert [s["kind"] for s in stages] == ["conv", "down", "down", "middle", "up", "up", "conv"]
    assert [s["resolution"] for s in stages] == [(8, 4), (8, 4), (4, 2), (2, 1), (4, 2), (8, 4), (8, 4)]
    assert stages[4]["in_channels"] == 16 + 16 and stages[5]["in_channels"] == 16 + 8
    assert stages[4]["skip_from"] == "down 2" and stages[5]["skip_from"] == "down 1"
    assert stages[-1]["out_channels"] == 2
    assert sum(s["parameters"] for s in stages) + n_parameters(net.time_mlp) == n_parameters(net)


def test_unet_validation():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*2"):
        UNet((1, 6, 8), channels=(8, 16))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        UNet((8, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        UNet((1, 0, 8))
    with pytest.raises(ValueError, match="channels"):
        UNet((1, 8, 8), channels=())
    with pytest.raises(ValueError, match="positive integer"):
        UNet((1, 8, 8), channels=(8, -1))
    net = UNet((1, 8, 8), channels=(8,))
    with pytest.raises(ValueError, match=r"shape \(n, 64\)"):
        net(torch.zeros(2, 63), 0.5)
    with pytest.raises(ValueError, match="t > 0"):
        net(torch.zeros(2, 64), 0.0)
    with pytest.raises(ValueError, match=r"\(0, T\]"):
        as_score(net, "eps", ConstantVP(T=1.0))(torch.zeros(2, 64), 2.0)


def test_unet_trains_with_dsm_and_runs_in_a_sampler():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sde = ConstantVP(T=5.0)
    x = torch.rand(32, 64, generator=g) * 2 - 1
    score = as_score(UNet((1, 8, 8), channels=(8, 16)), "eps", sde)
    t = torch.rand(32, generator=g) * 2 + 0.01
    eps = torch.randn(32, 64, generator=g)

    def fixed_loss():
        with torch.no_grad():
            return float(dsm_loss(score, x, 1e-2, sde=sde, t=t, eps=eps))

    before = fixed_loss()
    losses, _, _ = train(score, lambda m, b, generator: dsm_loss(m, b, 1e-2, sde=sde, t=t, eps=eps), x, steps=30,
                         batch_size=32, lr=3e-3, generator=g, progress=False)
    assert fixed_loss() < 0.7 * before
    out = ddim(score, (6, 64), time_grid(sde, 1e-2, 5), sde=sde, generator=g)
    assert out.shape == (6, 64) and out.dtype == torch.float64 and torch.isfinite(out).all()


def test_n_parameters():
    net = ScoreMLP(2, hidden=4, depth=1)
    assert n_parameters(net) == (2 + 32) * 4 + 4 + 4 * 2 + 2
    net.net[0].weight.requires_grad_(False)
    assert n_parameters(net) == (2 + 32) * 4 + 4 + 4 * 2 + 2 - 34 * 4
    assert n_parameters(net, trainable=False) == (2 + 32) * 4 + 4 + 4 * 2 + 2
    with pytest.raises(TypeError, match="Module"):
        n_parameters(lambda x: x)


# -- one randomness convention for initial weights ---------------------------------------------------------------
def _network_builders():
    from diffnotes.acceleration import StudentMLP
    from diffnotes.guidance import NoisyClassifier

    return {
        "ScoreMLP": lambda g: ScoreMLP(2, hidden=8, depth=1, generator=g),
        "ConditionalScoreMLP": lambda g: ConditionalScoreMLP(2, 3, hidden=8, depth=1, generator=g),
        "UNet": lambda g: UNet((1, 4, 4), channels=(4,), generator=g),
        "EncoderDecoderScore": lambda g: EncoderDecoderScore(5, 2, hidden=8, depth=1, generator=g),
        "StudentMLP": lambda g: StudentMLP(2, hidden=8, depth=1, generator=g),
        "NoisyClassifier": lambda g: NoisyClassifier(2, 3, hidden=8, depth=1, generator=g),
    }


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("name", list(_network_builders()))
def test_constructors_draw_initial_weights_from_the_generator_only(name):
    build = _network_builders()[name]
    state = torch.random.get_rng_state()
    a = build(5)
    # the global generator is left exactly as it was: no constructor seeds (or consumes) it when given a generator
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(_flat(a), _flat(build(torch.Generator().manual_seed(5))))  # int seed == torch generator
    assert not torch.equal(_flat(a), _flat(build(6)))
    g1, g2 = np.random.default_rng(1), np.random.default_rng(1)
    assert torch.equal(_flat(build(g1)), _flat(build(g2)))  # numpy generators accepted, reproducibly
    with pytest.raises(TypeError, match="generator"):
        build("seed")
