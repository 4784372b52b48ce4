"""Tests of diffnotes.losses: DSM = ESM + constant (T3), sliced score matching, label dropout, validation."""

import math

import pytest
import torch

from diffnotes.losses import (
    conditional_dsm_loss,
    drop_labels,
    dsm_loss,
    esm_loss,
    sample_times,
    sliced_score_matching_loss,
)
from diffnotes.networks import ScoreMLP, as_score
from diffnotes.sde import ConstantVP, LinearVP
from diffnotes.targets import GaussianMixture

SDE = ConstantVP(T=10.0)
TARGET = GaussianMixture([0.3, 0.3, 0.4], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], [0.3, 0.3, 0.2], SDE)
T0 = 1e-2


def _affine(a, b, target=TARGET):
    return lambda x, t: a * target.score(x, t) + b


@pytest.fixture(scope="module")
def crn():
    """Common random numbers: one draw of (x0, t, eps) shared by every loss evaluation."""
    g = torch.Generator().manual_seed(0)
    n = 8000
    x0 = TARGET.sample(n, g)
    t = sample_times(n, T0, sde=SDE, generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x0, t, eps


def _per_sample(model, crn, score_true=TARGET.score):
    x0, t, eps = crn
    with torch.no_grad():
        d = dsm_loss(model, x0, T0, sde=SDE, t=t, eps=eps, reduction="none")
        e = esm_loss(model, score_true, x0, T0, sde=SDE, t=t, eps=eps, reduction="none")
    return d, e


def _models():
    torch.manual_seed(0)
    models = {(a, b): _affine(a, b) for a in (0.5, 1.0, 1.5) for b in (-0.5, 0.0, 0.5)}
    models["mlp"] = ScoreMLP(2, hidden=32, depth=2).double()
    return models


def test_dsm_minus_esm_is_the_same_constant(crn):
    """T3: with common random numbers, DSM(s) - ESM(s) does not depend on s (within Monte Carlo error)."""
    models = _models()
    d_ref, e_ref = _per_sample(models[(1.0, 0.0)], crn)
    assert torch.all(e_ref == 0)
    diff_ref = d_ref - e_ref
    # The constant itself, for w = h: C = E|eps|^2 - E[h |s*|^2] = D - E[h |s*|^2] (here D = 2).
    q = diff_ref - (2 - _h_score_sq(crn))
    assert abs(float(q.mean())) < 4 * float(q.std()) / math.sqrt(q.numel())
    for key, model in models.items():
        d, e = _per_sample(model, crn)
        delta = (d - e) - diff_ref
        if key == (1.0, 0.0):
            assert torch.all(delta == 0)
            continue
        se = float(delta.std()) / math.sqrt(delta.numel())
        assert se > 0
        assert abs(float(delta.mean())) < 4 * se, (key, float(delta.mean()), se)


def _h_score_sq(crn):
    x0, t, eps = crn
    xt = SDE.alpha(t)[:, None] * x0 + SDE.sigma(t)[:, None] * eps
    return SDE.h(t) * (TARGET.score(xt, t) ** 2).sum(1)


def test_the_constancy_check_has_power(crn):
    """Negative control: against a wrong 'true' score the difference DSM - ESM varies with s far beyond 4 SE."""
    wrong = _affine(1.2, 0.0)
    models = _models()
    d_ref, e_ref = _per_sample(models[(1.0, 0.0)], crn, wrong)
    worst = 0.0
    for key, model in models.items():
        if key == (1.0, 0.0):
            continue
        d, e = _per_sample(model, crn, wrong)
        delta = (d - e) - (d_ref - e_ref)
        worst = max(worst, abs(float(delta.mean())) / (float(delta.std()) / math.sqrt(delta.numel())))
    assert worst > 10


def test_dsm_and_esm_are_minimised_at_the_true_score(crn):
    grid = {(a, b): _affine(a, b) for a in (0.75, 1.0, 1.25) for b in (-0.25, 0.0, 0.25)}
    dsm = {k: float(_per_sample(m, crn)[0].mean()) for k, m in grid.items()}
    esm = {k: float(_per_sample(m, crn)[1].mean()) for k, m in grid.items()}
    assert min(dsm, key=dsm.get) == (1.0, 0.0)
    assert min(esm, key=esm.get) == (1.0, 0.0)
    assert esm[(1.0, 0.0)] == 0.0


def test_dsm_with_h_weight_is_the_noise_prediction_loss():
    g = torch.Generator().manual_seed(1)
    x0 = TARGET.sample(64, g)
    t = sample_times(64, T0, sde=SDE, generator=g)
    eps = torch.randn(64, 2, generator=g, dtype=torch.float64)
    eps_net = ScoreMLP(2, hidden=16, depth=1).double()
    loss = dsm_loss(as_score(eps_net, "eps", SDE), x0, T0, sde=SDE, t=t, eps=eps)
    xt = SDE.alpha(t)[:, None] * x0 + SDE.sigma(t)[:, None] * eps
    direct = ((eps_net(xt, t) - eps) ** 2).sum(1).mean()
    assert torch.allclose(loss, direct, rtol=1e-12, atol=0)
    # weight "none" divides each term by h
    plain = dsm_loss(as_score(eps_net, "eps", SDE), x0, T0, sde=SDE, t=t, eps=eps, weight="none", reduction="none")
    assert torch.allclose(plain, ((eps_net(xt, t) - eps) ** 2).sum(1) / SDE.h(t), rtol=1e-12)
    # a callable weight
    w = dsm_loss(as_score(eps_net, "eps", SDE), x0, T0, sde=SDE, t=t, eps=eps, weight=lambda s: 2 * SDE.h(s))
    assert torch.allclose(w, 2 * direct, rtol=1e-12)


def test_losses_are_differentiable_and_reproducible():
    net = ScoreMLP(2, hidden=16, depth=1)
    model = as_score(net, "eps", SDE)
    x0 = TARGET.sample(32, torch.Generator().manual_seed(2))
    a = dsm_loss(model, x0, T0, sde=SDE, generator=torch.Generator().manual_seed(3))
    b = dsm_loss(model, x0, T0, sde=SDE, generator=torch.Generator().manual_seed(3))
    assert a.ndim == 0 and torch.equal(a, b)
    a.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    e = esm_loss(model, TARGET.score, x0, T0, sde=SDE, generator=torch.Generator().manual_seed(3))
    assert e.requires_grad


def test_times_are_uniform_on_the_interval():
    t = sample_times(20000, 0.5, 2.0, sde=SDE, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.5 and t.max() <= 2.0
    assert abs(float(t.mean()) - 1.25) < 4 * 1.5 / math.sqrt(12 * 20000)


@pytest.mark.parametrize("t0, T", [(0.0, None), (-1.0, None), (10.0, None), (2.0, 1.0), (0.1, 11.0)])
def test_bad_time_interval_raises(t0, T):
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="t0 outside|T must lie"):
        dsm_loss(lambda x, t: x, x0, t0, T, sde=SDE)


def test_bad_arguments_raise():
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    ok = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="weight"):
        dsm_loss(ok, x0, weight="uniform")
    with pytest.raises(ValueError, match="non-negative"):
        dsm_loss(ok, x0, weight=lambda t: -torch.ones_like(t))
    with pytest.raises(ValueError, match="eps"):
        dsm_loss(ok, x0, eps=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="t must"):
        dsm_loss(ok, x0, t=torch.ones(3))
    with pytest.raises(ValueError, match="must lie in"):
        dsm_loss(ok, x0, t=0.0)
    with pytest.raises(ValueError, match="reduction"):
        dsm_loss(ok, x0, reduction="sum")
    with pytest.raises(ValueError, match="shaped like x"):
        dsm_loss(lambda x, t: x[:, :1], x0)
    with pytest.raises(ValueError, match="shape"):
        dsm_loss(ok, torch.zeros(4))
    with pytest.raises(TypeError):
        dsm_loss(ok, torch.zeros(4, 2, dtype=torch.long))


def test_sliced_score_matching_is_half_esm_plus_a_constant():
    """J(s) - E|s - s*|^2 / 2 does not depend on s (Hyvarinen's integration by parts), for both estimators."""
    g = torch.Generator().manual_seed(4)
    t = 0.3
    x = TARGET.sample_marginal(6000, t, g)
    s_true = TARGET.score(x, t)
    for vr, projection in [(True, "gaussian"), (False, "gaussian"), (True, "rademacher")]:
        ref = None
        values = {}
        for a, b in [(1.0, 0.0), (0.5, 0.0), (1.5, 0.3), (0.8, -0.4)]:
            model = _affine(a, b)
            j = sliced_score_matching_loss(model, x, t, n_projections=2, projection=projection,
                                           variance_reduction=vr, generator=torch.Generator().manual_seed(5),
                                           reduction="none")
            diff = j - 0.5 * ((model(x, t) - s_true) ** 2).sum(1)
            values[(a, b)] = float(j.detach().mean())
            if ref is None:
                ref = diff
                continue
            delta = (diff - ref).detach()
            se = float(delta.std()) / math.sqrt(delta.numel())
            assert abs(float(delta.mean())) < 4 * se, (vr, projection, a, b)
        assert min(values, key=values.get) == (1.0, 0.0)


def test_sliced_score_matching_exact_trace_for_a_linear_score():
    """For s(x) = -x / c the directional term is exactly -|v|^2 / c; Rademacher v gives -D / c per projection."""
    x = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    j = sliced_score_matching_loss(lambda x, t: -x / 2.0, x, 1.0, projection="rademacher", reduction="none",
                                   generator=torch.Generator().manual_seed(1))
    assert torch.allclose(j, -3 / 2.0 + 0.5 * (x**2).sum(1) / 4.0, atol=1e-12)
    net = ScoreMLP(3, hidden=8, depth=1)
    loss = sliced_score_matching_loss(net, x.float(), 1.0)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="n_projections"):
        sliced_score_matching_loss(net, x, 1.0, n_projections=0)


class _Recorder:
    """A conditional score function that records the labels it receives."""

    n_classes = 3

    def __init__(self):
        self.seen = []

    def __call__(self, x, y, t):
        self.seen.append(y.clone())
        return torch.zeros_like(x)


def test_label_dropout_rate():
    g = torch.Generator().manual_seed(6)
    n = 20000
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    for p in (0.0, 0.2, 0.5, 1.0):
        rec = _Recorder()
        conditional_dsm_loss(rec, x0, y, T0, p_uncond=p, sde=SDE, generator=g)
        used = rec.seen[0]
        dropped = used == 3
        rate = float(dropped.double().mean())
        assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12
        assert torch.equal(used[~dropped], y[~dropped])  # kept labels are unchanged
    assert torch.equal(drop_labels(y, 0.0, 3), y)


def test_conditional_dsm_validation():
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    rec = _Recorder()
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p_uncond"):
            conditional_dsm_loss(rec, x0, y, p_uncond=p)
    with pytest.raises(ValueError, match="labels must lie"):
        conditional_dsm_loss(rec, x0, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        conditional_dsm_loss(rec, x0, torch.tensor([0, -1, 2, 1]))
    with pytest.raises(ValueError, match="integer label"):
        conditional_dsm_loss(rec, x0, y.double())
    with pytest.raises(ValueError, match="null label"):
        conditional_dsm_loss(rec, x0, y, null_label=1)
    with pytest.raises(TypeError, match="n_classes"):
        conditional_dsm_loss(lambda x, y, t: x, x0, y)
    with pytest.raises(ValueError, match="t0 outside"):
        conditional_dsm_loss(rec, x0, y, t0=20.0)


def test_conditional_dsm_without_dropout_matches_dsm_of_the_fixed_label():
    g = torch.Generator().manual_seed(7)
    x0 = TARGET.sample(100, g)
    t = sample_times(100, T0, sde=SDE, generator=g)
    eps = torch.randn(100, 2, generator=g, dtype=torch.float64)
    y = torch.ones(100, dtype=torch.long)
    cond = lambda x, yy, tt: TARGET.conditional_score(x, yy, tt)  # noqa: E731
    a = conditional_dsm_loss(cond, x0, y, T0, p_uncond=0.0, n_classes=3, sde=SDE, t=t, eps=eps)
    b = dsm_loss(lambda x, tt: TARGET.conditional_score(x, 1, tt), x0, T0, sde=SDE, t=t, eps=eps)
    assert torch.allclose(a, b, rtol=1e-13)


def test_other_schedules_are_accepted():
    sde = LinearVP()
    x0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    loss = dsm_loss(lambda x, t: -x, x0, 1e-3, sde=sde, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="T must lie"):
        dsm_loss(lambda x, t: -x, x0, 1e-3, 2.0, sde=sde)
