"""Spin models: enumeration against brute force, exact tilted means and scores, mean field, Glauber, validation."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffnotes.localization import localization_grid, stochastic_localization
from diffnotes.sde import ConstantVP
from diffnotes.spins import MAX_ENUMERATION, CurieWeiss, SherringtonKirkpatrick, SpinModel, all_configurations


def brute_force(model):
    """Configurations and Gibbs probabilities by an explicit loop over {-1, 1}^N with the textbook energies."""
    configs = np.array(list(itertools.product([-1.0, 1.0], repeat=model.N)))
    if isinstance(model, CurieWeiss):
        M = configs.sum(1)
        energy = -model.N * ((M / model.N) ** model.p / model.p + model.field * M / model.N)
    else:
        J = model.J.numpy()
        energy = np.array([-0.5 * c @ J @ c - model.field * c.sum() for c in configs])
    w = np.exp(-model.beta * energy - np.max(-model.beta * energy))
    return configs, w / w.sum()


MODELS = [
    CurieWeiss(8, 1.3),
    CurieWeiss(7, 0.7, field=0.2, p=3),
    CurieWeiss(6, 2.0, field=-0.1, p=4),
    SherringtonKirkpatrick(7, 1.5, field=0.1, generator=torch.Generator().manual_seed(0)),
]


def test_all_configurations():
    c = all_configurations(5)
    assert c.shape == (32, 5) and c.dtype == torch.float64
    assert len({tuple(r) for r in c.tolist()}) == 32 and set(c.unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="in \\[1, 16\\]"):
        all_configurations(MAX_ENUMERATION + 1)


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_enumeration_against_brute_force(model):
    configs, probs = brute_force(model)
    ours = dict(zip(map(tuple, model.configurations().tolist()), model.probabilities().tolist(), strict=True))
    assert np.allclose([ours[tuple(c)] for c in configs], probs, rtol=1e-12, atol=0)
    m_vals, law = model.magnetization_law()
    k = np.round((configs.sum(1) + model.N) / 2).astype(int)
    assert np.allclose(law, np.bincount(k, weights=probs, minlength=model.N + 1), atol=1e-14)
    assert np.allclose(m_vals, np.linspace(-1, 1, model.N + 1))
    energy = model.energy(torch.as_tensor(configs))
    assert math.isclose(model.log_partition(), float(torch.logsumexp(-model.beta * energy, 0)), rel_tol=1e-12)


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_flip_log_odds_match_the_energy(model):
    sigma = model.sample(50, torch.Generator().manual_seed(1))
    for i in range(model.N):
        assert torch.allclose(model.flip_log_odds(sigma, i), SpinModel.flip_log_odds(model, sigma, i), atol=1e-12)


@pytest.mark.parametrize("p,field", [(2, 0.0), (3, 0.1), (4, -0.2)])
def test_curie_weiss_closed_forms_equal_enumeration(p, field):
    cw = CurieWeiss(9, 1.4, field=field, p=p)
    assert np.allclose(cw.magnetization_law()[1], SpinModel.magnetization_law(cw)[1], atol=1e-14)
    gen = torch.Generator().manual_seed(2)
    y = torch.cat([torch.randn(40, 9, generator=gen, dtype=torch.float64),
                   30 * torch.randn(5, 9, generator=gen, dtype=torch.float64), torch.zeros(1, 9, dtype=torch.float64)])
    assert torch.allclose(cw.tilted_mean(y), SpinModel.tilted_mean(cw, y), atol=1e-12, rtol=0)


def test_curie_weiss_exact_sampler_any_n():
    # Large N: no enumeration, but the magnetisation law is closed-form and the sampler must follow it.
    cw = CurieWeiss(40, 1.2, field=0.05)
    x = cw.sample(20000, torch.Generator().manual_seed(3))
    assert set(x.unique().tolist()) == {-1.0, 1.0}
    _, law = cw.magnetization_law()
    counts = np.bincount(((x.sum(1) + 40) / 2).long().numpy(), minlength=41)
    keep = law * 20000 > 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = 20000 * np.append(law[keep], law[~keep].sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # Given m, every configuration is equally likely: each site is up with the same frequency.
    assert np.abs(x.mean(0).numpy() - x.mean().item()).max() < 4 * math.sqrt(1 / 20000)
    # The dynamic programme for the tilted mean works at this size: with y = 0 it gives E[m] at every site.
    m0 = cw.tilted_mean(torch.zeros(2, 40, dtype=torch.float64))
    assert torch.allclose(m0, torch.full_like(m0, float(np.dot(*cw.magnetization_law()))), atol=1e-12)


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_tilted_mean_is_the_sl_posterior_mean_for_every_snr(model):
    # Bayes' rule with the Gaussian channel y = s sigma + sqrt(s) g, by brute force: the answer does not depend on s.
    configs, probs = brute_force(model)
    configs = torch.as_tensor(configs)
    gen = torch.Generator().manual_seed(4)
    for s in [0.05, 0.8, 6.0]:
        sigma = model.sample(20, gen)
        y = s * sigma + math.sqrt(s) * torch.randn(sigma.shape, generator=gen, dtype=torch.float64)
        log_lik = -((y[:, None, :] - s * configs[None]) ** 2).sum(-1) / (2 * s)
        log_post = torch.log(torch.as_tensor(probs))[None] + log_lik
        exact = torch.softmax(log_post, 1) @ configs
        assert torch.allclose(model.tilted_mean(y), exact, atol=1e-11)
        assert torch.allclose(model.posterior_mean()(y, torch.full((20,), s)), exact, atol=1e-11)


def test_ou_score_by_enumeration_is_the_gradient_of_the_diffused_log_density():
    model = CurieWeiss(5, 1.5, field=0.1)
    sde = ConstantVP(T=5.0)
    configs, probs = brute_force(model)
    configs, logp = torch.as_tensor(configs), torch.log(torch.as_tensor(probs))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64).requires_grad_(True)
    t = 0.01 + 4 * torch.rand(30, generator=gen, dtype=torch.float64)
    a, h = sde.alpha(t)[:, None, None], sde.h(t)[:, None, None]
    log_pt = torch.logsumexp(logp[None] - ((x[:, None, :] - a * configs[None]) ** 2).sum(-1) / (2 * h[:, :, 0]), 1)
    (grad,) = torch.autograd.grad(log_pt.sum(), x)
    assert torch.allclose(model.score_function(sde)(x.detach(), t), grad, atol=1e-10)


def test_mean_field_fixed_points():
    gen = torch.Generator().manual_seed(6)
    y = torch.randn(50, 12, generator=gen, dtype=torch.float64)
    for p, beta in [(2, 0.5), (2, 1.5), (3, 2.5)]:
        cw = CurieWeiss(12, beta, field=0.05, p=p)
        m = cw.mean_field(y, grid=513)  # a fine scan: no pair of close roots is stepped over
        mbar = m.mean(1, keepdim=True)
        assert torch.allclose(m, torch.tanh(beta * mbar ** (p - 1) + beta * 0.05 + y), atol=1e-8)
        # It is the point the damped fixed-point iteration from the uninformed start converges to.
        it = torch.zeros(50, 1, dtype=torch.float64)
        for _ in range(5000):
            it = 0.7 * it + 0.3 * torch.tanh(beta * it ** (p - 1) + beta * 0.05 + y).mean(1, keepdim=True)
        assert torch.allclose(mbar, it, atol=1e-6)
    # beta = 0: independent spins, mean field is exact.
    free = CurieWeiss(12, 0.0)
    assert torch.allclose(free.mean_field(y), torch.tanh(y), atol=1e-12)
    assert torch.allclose(free.tilted_mean(y), torch.tanh(y), atol=1e-12)


def test_mean_field_misses_the_ferromagnetic_state_of_a_first_order_model():
    # p = 3, beta = 2.5: the Gibbs measure sits mostly at m close to 1, but m = 0 stays a stable mean-field fixed point,
    # and the uninformed start finds it; an informed start finds the ferromagnetic branch.
    cw = CurieWeiss(16, 2.5, p=3)
    y0 = torch.zeros(1, 16, dtype=torch.float64)
    assert float(cw.tilted_mean(y0).mean()) > 0.8
    assert abs(float(cw.mean_field(y0).mean())) < 1e-12
    assert float(cw.mean_field(y0, init=1.0).mean()) > 0.95
    # p = 2 below the transition: m = 0 is unstable, any small field picks a branch.
    cw2 = CurieWeiss(16, 1.5)
    assert float(cw2.mean_field(torch.full((1, 16), 1e-6, dtype=torch.float64)).mean()) > 0.8


def test_tap_is_closer_than_naive_mean_field_at_high_temperature():
    errs = {"naive": [], "tap": []}
    for seed in range(5):
        sk = SherringtonKirkpatrick(12, 0.4, generator=torch.Generator().manual_seed(seed))
        y = 0.5 * torch.randn(20, 12, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        exact = sk.tilted_mean(y)
        for name, tap in [("naive", False), ("tap", True)]:
            m = sk.mean_field(y, tap=tap)
            errs[name].append(float(((m - exact) ** 2).mean()))
    assert np.mean(errs["tap"]) < 0.5 * np.mean(errs["naive"]), errs


def test_glauber_keeps_the_gibbs_measure_and_cold_starts_stay_in_one_mode():
    cw = CurieWeiss(10, 0.8, field=0.1)
    gen = torch.Generator().manual_seed(7)
    n = 20000
    x, trace = cw.glauber(cw.sample(n, gen), 3, gen)
    assert trace.shape == (4, n) and torch.equal(trace[-1], x.mean(1))
    m_vals, law = cw.magnetization_law()
    for k in (1, 2):
        exact = float(np.dot(m_vals**k, law))
        sd = math.sqrt(float(np.dot(m_vals ** (2 * k), law)) - exact**2)
        assert abs(float((trace[-1] ** k).mean()) - exact) < 4 * sd / math.sqrt(n)
    # SK, generic path: the energy mean is preserved.
    sk = SherringtonKirkpatrick(8, 1.0, generator=gen)
    start = sk.sample(n, gen)
    e_exact = float((sk.probabilities() * sk.energy(sk.configurations())).sum())
    e_sd = float(torch.sqrt((sk.probabilities() * (sk.energy(sk.configurations()) - e_exact) ** 2).sum()))
    x, _ = sk.glauber(start, 2, gen)
    assert abs(float(sk.energy(x).mean()) - e_exact) < 4 * e_sd / math.sqrt(n)
    # Low temperature: chains started all +1 do not reach the negative mode in a few sweeps.
    cold = CurieWeiss(16, 2.0)
    x, _ = cold.glauber(("plus", 500), 10, gen)
    assert float((x.mean(1) < 0).double().mean()) < 0.1
    x, _ = cold.glauber(("random", 5), 0, gen)
    assert set(x.unique().tolist()) <= {-1.0, 1.0}


def test_exact_sl_samples_the_curie_weiss_measure():
    cw = CurieWeiss(10, 1.5)
    grid = torch.cat([torch.linspace(0, 4, 81, dtype=torch.float64), localization_grid(40.0, 20, 4.0)[2:]])
    y = stochastic_localization(cw.posterior_mean(), (4000, 10), grid, generator=torch.Generator().manual_seed(8))
    m = torch.sign(y).mean(1).numpy()
    m_vals, law = cw.magnetization_law()
    counts = np.bincount(np.round((m + 1) * 5).astype(int), minlength=11)
    assert stats.chisquare(counts, 4000 * law).pvalue > 1e-3


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="N = 20"):
        CurieWeiss(20, 1.0).configurations()
    with pytest.raises(ValueError, match=">= 0"):
        CurieWeiss(5, -1.0)
    with pytest.raises(ValueError, match="p must be"):
        CurieWeiss(5, 1.0, p=1)
    with pytest.raises(TypeError, match="integer"):
        CurieWeiss(5.5, 1.0)
    with pytest.raises(ValueError, match="finite"):
        CurieWeiss(5, 1.0, field=math.nan)
    with pytest.raises(ValueError, match="symmetric"):
        SherringtonKirkpatrick(3, 1.0, couplings=[[0, 1, 0], [0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="shape"):
        SherringtonKirkpatrick(3, 1.0, couplings=np.zeros((2, 2)))
    cw = CurieWeiss(5, 1.0)
    with pytest.raises(ValueError, match="-1 or \\+1"):
        cw.energy(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"shape \(n, 5\)"):
        cw.tilted_mean(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite"):
        cw.mean_field(torch.full((2, 5), math.inf, dtype=torch.float64))
    with pytest.raises(ValueError, match="TAP"):
        cw.mean_field(torch.zeros(2, 5, dtype=torch.float64), tap=True)
    with pytest.raises(ValueError, match="init"):
        cw.mean_field(torch.zeros(2, 5, dtype=torch.float64), init=2.0)
    with pytest.raises(ValueError, match="method"):
        cw.posterior_mean("magic")
    with pytest.raises(ValueError, match="start"):
        cw.glauber(("hot", 3), 1)
    with pytest.raises(ValueError, match="n_sweeps"):
        cw.glauber(("plus", 3), -1)
    sk = SherringtonKirkpatrick(4, 1.0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="damping"):
        sk.mean_field(torch.zeros(1, 4, dtype=torch.float64), damping=0.0)
    with pytest.raises(TypeError):
        cw.score_function(sde="not an sde")
