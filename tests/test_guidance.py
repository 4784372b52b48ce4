"""Tests of diffnotes.guidance: Bayes' rule (T18), classifier-free guidance, universal guidance (T22)."""

import functools

import pytest
import torch

from diffnotes.data import mixture_data
from diffnotes.guidance import (
    NoisyClassifier,
    classifier_free_guidance,
    classifier_guidance,
    clean_log_classifier,
    noisy_classifier_loss,
    universal_guidance,
    with_null_label,
)
from diffnotes.losses import sample_times
from diffnotes.networks import ConditionalScoreMLP, as_score
from diffnotes.samplers import euler_maruyama, time_grid
from diffnotes.sde import ConstantVP
from diffnotes.targets import GaussianMixture
from diffnotes.training import train

SDE = ConstantVP(T=10.0)
# Four components in three classes (class 0 gathers two): the conditional score is itself a mixture score.
TARGET = GaussianMixture([0.2, 0.2, 0.3, 0.3], [[-2.0, 0.0], [0.0, -2.0], [2.0, 0.0], [0.0, 2.0]],
                         [[0.3, 0.3], [0.2, 0.2], [0.3, 0.1], [0.2, 0.2]], SDE, labels=[0, 0, 1, 2])


def _points(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _close(a, b, tol=1e-10):
    return torch.allclose(a, b, rtol=0, atol=tol * (1 + float(b.abs().max())))


@pytest.mark.parametrize("t", [1e-3, 0.1, 1.0, 5.0])
def test_classifier_guidance_is_bayes_rule(t):
    """T18: s(x, t) + grad log c_t(y | x) equals the exact conditional score."""
    x = _points()
    for y in range(TARGET.n_classes):
        guided = classifier_guidance(TARGET.score, TARGET.class_log_posterior, y, eta=0.0)
        assert _close(guided(x, t), TARGET.conditional_score(x, y, t))
    y_rows = torch.arange(x.shape[0]) % 3
    t_rows = torch.linspace(1e-3, 5.0, x.shape[0], dtype=torch.float64)
    guided = classifier_guidance(TARGET.score, TARGET.class_log_posterior, y_rows)
    assert _close(guided(x, t_rows), TARGET.conditional_score(x, y_rows, t_rows))


def test_bayes_rule_check_can_fail():
    """Guidance with eta > 0 is not the conditional score: the comparison above distinguishes them."""
    x = _points()
    guided = classifier_guidance(TARGET.score, TARGET.class_log_posterior, 1, eta=0.5)
    assert (guided(x, 1.0) - TARGET.conditional_score(x, 1, 1.0)).abs().max() > 1e-2


def test_classifier_free_guidance_with_exact_scores():
    cond = with_null_label(TARGET.conditional_score, TARGET.score, n_classes=TARGET.n_classes)
    assert cond.null_label == 3
    x = _points()
    for t in (0.01, 0.5, 3.0):
        assert _close(classifier_free_guidance(cond, 2, eta=0.0)(x, t), TARGET.conditional_score(x, 2, t))
        for eta in (0.5, 3.0):
            cfg = classifier_free_guidance(cond, 2, eta=eta)(x, t)
            formula = (1 + eta) * TARGET.conditional_score(x, 2, t) - eta * TARGET.score(x, t)
            assert _close(cfg, formula)
            # Same strength convention as classifier guidance: with exact pieces the two coincide.
            cg = classifier_guidance(TARGET.score, TARGET.class_log_posterior, 2, eta=eta)(x, t)
            assert _close(cfg, cg, 1e-9)
    # null rows of the joined function are the unconditional score
    y = torch.tensor([3, 0, 3, 1] * 75)
    joined = cond(x, y, 0.4)
    assert _close(joined[y == 3], TARGET.score(x[y == 3], 0.4))
    assert _close(joined[y == 0], TARGET.conditional_score(x[y == 0], 0, 0.4))


def test_time_dependent_strength():
    x = _points(50)
    eta = lambda t: 2.0 * (t > 1.0)  # noqa: E731
    cond = with_null_label(TARGET.conditional_score, TARGET.score, n_classes=3)
    t_rows = torch.cat([torch.full((25,), 0.5), torch.full((25,), 2.0)]).double()
    out = classifier_free_guidance(cond, 0, eta=eta)(x, t_rows)
    assert _close(out[:25], TARGET.conditional_score(x[:25], 0, 0.5))
    assert _close(out[25:], 3 * TARGET.conditional_score(x[25:], 0, 2.0) - 2 * TARGET.score(x[25:], 2.0))
    with pytest.raises(ValueError, match=">= 0"):
        classifier_guidance(TARGET.score, TARGET.class_log_posterior, 0, eta=lambda t: -t)(x, 1.0)


def test_universal_guidance_matches_classifier_guidance_only_at_small_t():
    """T22: through Tweedie's x0_hat, the clean classifier reproduces classifier guidance as t -> 0, not at large t."""
    clean = clean_log_classifier(TARGET)
    x0 = TARGET.sample(1000, torch.Generator().manual_seed(1))
    rel = {}
    for t in (1e-3, 1e-2, 0.1, 2.0):
        xt = SDE.marginal_sample(x0, t, torch.Generator().manual_seed(2))[0]
        base = TARGET.score(xt, t)
        ug = universal_guidance(TARGET.score, clean, SDE, 1.0, y=2)(xt, t) - base
        cg = classifier_guidance(TARGET.score, TARGET.class_log_posterior, 2)(xt, t) - base
        rel[t] = float((ug - cg).norm() / cg.norm())
    assert rel[1e-3] < 1e-2  # measured 3.3e-3
    assert rel[1e-3] < rel[1e-2] < rel[0.1]
    assert rel[2.0] > 0.5  # measured 9.5


def test_clean_classifier_is_the_small_time_limit_of_the_noisy_one():
    clean = clean_log_classifier(TARGET)
    x = _points()
    lp = clean(x)
    assert lp.shape == (x.shape[0], 3)
    assert torch.allclose(torch.logsumexp(lp, 1), torch.zeros(x.shape[0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(lp.exp(), TARGET.class_posterior(x, 1e-9), atol=1e-6)


def test_universal_guidance_differentiates_through_tweedie():
    """For N(mu, c I) data, x0_hat is affine with Jacobian alpha c / (alpha^2 c + h): the guidance term is exact."""
    from diffnotes.targets import Gaussian

    mu, c = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.7
    target = Gaussian(mu, c, SDE)
    a = torch.tensor([0.3, -1.2], dtype=torch.float64)
    x = _points(10)
    for t in (0.05, 1.0, 4.0):
        alpha, h = float(SDE.alpha(t)), float(SDE.h(t))
        out = universal_guidance(target.score, lambda x0: x0 @ a, SDE, strength=1.5)(x, t)
        expected = target.score(x, t) + 1.5 * alpha * c / (alpha**2 * c + h) * a
        assert _close(out, expected)


def test_universal_guidance_with_a_scalar_log_likelihood():
    x = _points(20)
    f = lambda x0: -0.5 * (x0**2).sum(1)  # noqa: E731
    out = universal_guidance(TARGET.score, f, SDE, strength=2.0)(x, 0.5)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\(20,\)"):
        universal_guidance(TARGET.score, lambda x0: x0, SDE)(x, 0.5)
    with pytest.raises(ValueError, match=r"\(0, T\]"):
        universal_guidance(TARGET.score, f, SDE)(x, 0.0)


def test_negative_strength_and_bad_labels_raise():
    cond = with_null_label(TARGET.conditional_score, TARGET.score, n_classes=3)
    clean = clean_log_classifier(TARGET)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strength"):
            classifier_guidance(TARGET.score, TARGET.class_log_posterior, 0, eta=bad)
        with pytest.raises(ValueError, match="strength"):
            classifier_free_guidance(cond, 0, eta=bad)
        with pytest.raises(ValueError, match="strength"):
            universal_guidance(TARGET.score, clean, SDE, strength=bad, y=0)
    for y in (3, -1):
        with pytest.raises(ValueError, match="labels must|null label"):
            classifier_guidance(TARGET.score, TARGET.class_log_posterior, y)
        with pytest.raises(ValueError, match="labels must|null label"):
            classifier_free_guidance(cond, y, eta=1.0)
        with pytest.raises(ValueError, match="labels must|null label"):
            universal_guidance(TARGET.score, clean, SDE, y=y)
    with pytest.raises(TypeError):
        classifier_guidance(TARGET.score, TARGET.class_log_posterior, 1.0)
    with pytest.raises(TypeError, match="null_label"):
        classifier_free_guidance(TARGET.conditional_score, 0, eta=1.0)
    # a classifier whose class count is only known at call time still rejects labels beyond it
    anonymous = lambda x, t: TARGET.class_log_posterior(x, t)  # noqa: E731
    with pytest.raises(ValueError, match="0..2"):
        classifier_guidance(TARGET.score, anonymous, 5)(_points(4), 1.0)


def test_guided_scores_run_inside_samplers():
    """Samplers call scores under torch.no_grad(): the guidance gradients must still be computed."""
    times = time_grid(SDE, 1e-2, 10, T=5.0)
    guided = classifier_guidance(TARGET.score, TARGET.class_log_posterior, 1, eta=1.0)
    out = euler_maruyama(guided, (20, 2), times, sde=SDE, generator=torch.Generator().manual_seed(0))
    assert out.shape == (20, 2) and torch.isfinite(out).all()
    ug = universal_guidance(TARGET.score, clean_log_classifier(TARGET), SDE, 1.0, y=1)
    out = euler_maruyama(ug, (20, 2), times, sde=SDE, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    net = as_score(ConditionalScoreMLP(2, 3, hidden=8, depth=1), "eps", SDE)
    out = euler_maruyama(classifier_free_guidance(net, 0, eta=2.0), (20, 2), times, sde=SDE,
                         generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_noisy_classifier_learns_the_exact_posterior():
    """A short training run brings the learned c_t(y | x) close to the exact posterior (KL drops by > 10x)."""
    g = torch.Generator().manual_seed(0)
    x, y = mixture_data(TARGET, 3000, g)
    xe, _ = mixture_data(TARGET, 3000, g)
    te = sample_times(3000, 1e-2, sde=SDE, generator=g)
    xte = SDE.marginal_sample(xe, te, g)[0]
    exact = TARGET.class_log_posterior(xte, te)

    def kl(clf):
        with torch.no_grad():
            return float((exact.exp() * (exact - clf(xte, te))).sum(1).mean())

    torch.manual_seed(0)
    clf = NoisyClassifier(2, 3)
    out = clf(xte[:5], te[:5])
    assert torch.allclose(torch.logsumexp(out, 1), torch.zeros(5, dtype=torch.float64), atol=1e-6)
    before = kl(clf)
    loss = functools.partial(noisy_classifier_loss, t0=1e-2, sde=SDE)
    train(clf, loss, (x, y), steps=300, batch_size=256, lr=3e-3, generator=torch.Generator().manual_seed(1),
          progress=False)
    after = kl(clf)
    assert after < before / 10, (before, after)  # measured about 50x
    guided = classifier_guidance(TARGET.score, clf, 2)
    assert guided(xte[:10], te[:10]).shape == (10, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        classifier_guidance(TARGET.score, clf, 3)


# -- the stability of guided DDPM at the centre (T21) ------------------------------------------------------------------
def _line(sde):
    from diffnotes.targets import GaussianMixture

    return GaussianMixture([1 / 3, 1 / 3, 1 / 3], [[-3.0], [0.0], [3.0]], [1.0, 1.0, 1.0], sde=sde)


@pytest.mark.parametrize("eta", [0.5, 3.0])
def test_centre_stiffness_is_the_slope_of_the_guided_score_at_the_centre(eta):
    """Independent of the formula: autograd of the classifier-free guided score of the middle component at x = 0."""
    from diffnotes.guidance import centre_stiffness, classifier_free_guidance, with_null_label
    from diffnotes.sde import ConstantVP

    sde = ConstantVP(T=8.0)
    line = _line(sde)
    guided = classifier_free_guidance(with_null_label(line.conditional_score, line.score, n_classes=3), 1, eta=eta)
    for t in (0.3, 1.0, 2.5):
        x = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
        (slope,) = torch.autograd.grad(guided(x, t).sum(), x)
        v = float(sde.alpha(torch.tensor(t)) ** 2 + sde.h(torch.tensor(t)))
        c = float(centre_stiffness(line, t)[0])
        assert float(slope) == pytest.approx(-(1 + eta * c) / v, rel=1e-10)


def test_ddpm_step_factors_at_the_split_threshold_reach_minus_one():
    from diffnotes.guidance import ddpm_step_factors, split_threshold
    from diffnotes.samplers import time_grid
    from diffnotes.sde import ConstantVP

    sde = ConstantVP(T=8.0)
    line, grid = _line(sde), time_grid(sde, 1e-3, 32, spacing="uniform")
    eta_c = split_threshold(line, grid)
    assert float(ddpm_step_factors(line, grid, eta_c).min()) == pytest.approx(-1.0, abs=1e-12)
    assert float(ddpm_step_factors(line, grid, 0.99 * eta_c).min()) > -1
    with pytest.raises(ValueError, match="decreasing"):
        split_threshold(line, grid.flip(0))
    with pytest.raises(ValueError, match="strength"):
        ddpm_step_factors(line, grid, -1.0)


def test_block_noise_repeats_one_draw_per_block_and_checks_the_batch():
    from diffnotes.samplers import block_noise

    noise = block_noise(3, 4, generator=0)
    like = torch.zeros(12, 2, dtype=torch.float64)
    xi = noise(like)
    assert xi.dtype == torch.float64 and torch.equal(xi[:3], xi[9:]) and not torch.equal(noise(like)[:3], xi[:3])
    with pytest.raises(ValueError, match="12 rows"):
        noise(torch.zeros(5, 2))
