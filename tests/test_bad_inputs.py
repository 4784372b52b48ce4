"""Every score provider answers the same bad input the same way (the policy of diffnotes._checks)."""

import math

import pytest
import torch

from diffnotes.estimators import EmpiricalScore, KernelScore, SubspaceScore, score_error
from diffnotes.guidance import classifier_free_guidance
from diffnotes.ising import IsingModel, random_couplings
from diffnotes.losses import esm_loss
from diffnotes.manifold import Circle
from diffnotes.networks import ScoreMLP, as_score
from diffnotes.sde import ConstantVP
from diffnotes.spins import CurieWeiss
from diffnotes.targets import Gaussian, GaussianMixture, SubspaceMixture, orthonormal_basis

SDE = ConstantVP(T=5.0)


def _gen():
    return torch.Generator().manual_seed(0)


def _providers():
    """(name, D, score callable, object with .score or None)."""
    mix = GaussianMixture([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]], [torch.eye(2) * 0.3, torch.eye(2) * 0.5], SDE)
    gauss = Gaussian([0.5, -0.5], [[1.0, 0.2], [0.2, 0.5]], SDE)
    sub = SubspaceMixture(orthonormal_basis(3, 2, _gen()), [1.0], [[0.0, 0.0]], [torch.eye(2)], SDE)
    circle = Circle(1.0, SDE)
    data = mix.sample(50, _gen())
    emp, ker = EmpiricalScore(data, SDE), KernelScore(data, SDE, bandwidth=0.3)
    pca = SubspaceScore(sub.sample(50, _gen()), SDE, 2)
    net = as_score(ScoreMLP(2, hidden=8, depth=1), "eps", SDE)
    ising = IsingModel(random_couplings(3, 0.5, _gen()), SDE)
    cw = CurieWeiss(3, 0.8)
    cfg = classifier_free_guidance(lambda x, y, t: mix.score(x, t), 0, 1.0, null_label=1)
    return [
        ("Gaussian", 2, gauss.score, gauss), ("GaussianMixture", 2, mix.score, mix),
        ("SubspaceMixture", 3, sub.score, sub), ("Circle", 2, circle.score, circle),
        ("EmpiricalScore", 2, emp.score, emp), ("KernelScore", 2, ker.score, ker),
        ("SubspaceScore", 3, pca.score, pca), ("as_score", 2, net, None),
        ("IsingModel", 3, ising.score, ising), ("CurieWeiss.score_function", 3, cw.score_function(SDE), None),
        ("classifier_free_guidance", 2, cfg, None),
    ]


PROVIDERS = _providers()
IDS = [p[0] for p in PROVIDERS]


def _bad_inputs(D):
    good = torch.randn(4, D, dtype=torch.float64, generator=_gen())
    nan = good.clone()
    nan[1] = math.nan
    return [
        ("NaN row", nan, 1.0, ValueError, "NaN"),
        ("integer tensor", torch.ones(4, D, dtype=torch.int64), 1.0, TypeError, "floating"),
        ("Python list", good.tolist(), 1.0, TypeError, "torch tensor"),
        ("wrong dimension", torch.randn(4, D + 1, dtype=torch.float64), 1.0, ValueError, "shape"),
        ("t = 0", good, 0.0, ValueError, r"\(0, T\]"),
        ("t < 0", good, -1.0, ValueError, r"\(0, T\]"),
        ("t > T", good, SDE.T * 2, ValueError, r"\(0, T\]"),
    ]


@pytest.mark.parametrize(("name", "D", "score", "obj"), PROVIDERS, ids=IDS)
def test_every_provider_gives_the_same_errors(name, D, score, obj):
    assert score(torch.randn(4, D, dtype=torch.float64), 1.0).shape == (4, D)
    for what, x, t, error, match in _bad_inputs(D):
        with pytest.raises(error, match=match):
            score(x, t)
            pytest.fail(f"{name} accepted {what}")


@pytest.mark.parametrize(("name", "D", "score", "obj"), PROVIDERS, ids=IDS)
def test_every_provider_feeds_every_consumer(name, D, score, obj):
    x = torch.randn(6, D, dtype=torch.float64, generator=_gen())
    for provider in [score] + ([obj] if obj is not None else []):
        err = score_error(provider, score, 1.0, points=x)
        assert err.mean == pytest.approx(0.0, abs=1e-20)
        err = score_error(score, provider, 1.0, points=x)
        assert err.mean == pytest.approx(0.0, abs=1e-20)
    loss = esm_loss(score, score, x, sde=SDE, t=torch.full((6,), 1.0, dtype=torch.float64),
                    eps=torch.zeros_like(x))
    assert float(loss) == pytest.approx(0.0, abs=1e-20)


def _raw_providers():
    """(name, D, f(x, t)): networks called directly and the conditional providers, which the table above omits."""
    from diffnotes.estimators import ConditionalKernelScore, ConditionedScore
    from diffnotes.networks import ConditionalScoreMLP, EncoderDecoderScore, UNet

    mix = GaussianMixture([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]], [torch.eye(2) * 0.3, torch.eye(2) * 0.5], SDE)
    data = mix.sample(40, _gen())
    y = torch.arange(40, dtype=torch.float64) % 2
    cks = ConditionalKernelScore(data, y, SDE, bandwidth=0.3)
    cond = ConditionedScore(cks, 0.5)
    mlp = ScoreMLP(2, hidden=8, depth=1, generator=0)
    cmlp = ConditionalScoreMLP(2, 2, hidden=8, depth=1, generator=0)
    ed = EncoderDecoderScore(3, 2, sde=SDE, hidden=8, depth=1, generator=0)
    unet = UNet((1, 4, 4), channels=(8, 8), groups=4, generator=0)
    return [
        ("ScoreMLP", 2, mlp), ("ConditionalScoreMLP", 2, lambda x, t: cmlp(x, 1, t)),
        ("EncoderDecoderScore", 3, ed), ("UNet", 16, unet),
        ("ConditionalKernelScore", 2, lambda x, t: cks.score(x, 0.0, t)), ("ConditionedScore", 2, cond.score),
    ]


RAW = _raw_providers()


@pytest.mark.parametrize(("name", "D", "f"), RAW, ids=[r[0] for r in RAW])
def test_networks_and_conditional_providers_refuse_bad_points_and_times(name, D, f):
    good = torch.randn(4, D, dtype=torch.float64, generator=_gen())
    with torch.no_grad():
        assert torch.all(torch.isfinite(f(good, 1.0)))
        nan = good.clone()
        nan[2, 0] = math.nan
        cases = [(nan, 1.0, ValueError, "NaN"), (good * math.inf, 1.0, ValueError, "NaN or infinite"),
                 (torch.ones(4, D, dtype=torch.int64), 1.0, TypeError, "floating"),
                 (torch.ones(4, D, dtype=torch.bool), 1.0, TypeError, "floating"),
                 (good, math.nan, ValueError, "finite"), (good, math.inf, ValueError, "finite"),
                 (good, torch.tensor([1.0, math.nan, 1.0, 1.0], dtype=torch.float64), ValueError, "finite")]
        for x, t, error, match in cases:
            with pytest.raises(error, match=match):
                f(x, t)
                pytest.fail(f"{name} accepted a bad input")
        # A time is a number: an integer time tensor is converted (a documented choice), never refused or NaN.
        assert torch.equal(f(good, torch.ones(4, dtype=torch.int64)), f(good, torch.ones(4, dtype=torch.float64)))
