"""Tests of diffnotes.robustness: attacks, purification, majority vote."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from diffnotes import robustness as rb
from diffnotes.sde import ConstantVP
from diffnotes.targets import Gaussian, GaussianMixture


@pytest.fixture(scope="module")
def problem():
    """A two-class 2-D mixture and a small MLP trained on it."""
    gm = GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [1.5, 0.0]], [1.0, 1.0], sde=ConstantVP(T=5.0))
    x, y = gm.sample(400, generator=torch.Generator().manual_seed(0), return_labels=True)
    clf = rb.SmallClassifier(2, 2, hidden=8, depth=1, generator=1)
    rb.train_classifier(clf, x, y, steps=200, lr=0.05)
    return gm, clf, x[:100], y[:100]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attacks_increase_the_loss(problem, norm):
    _, clf, x, y = problem
    clean = rb.cross_entropy(clf, x, y).detach()
    # a small radius is the first-order regime: the loss rises by ~ eps * (dual norm of the gradient) > 0 on every row
    small = rb.cross_entropy(clf, rb.fgsm(clf, x, y, 0.01, norm=norm), y).detach()
    assert torch.all(small > clean)
    # a large radius: one FGSM step may overshoot on a curved row, but the mean loss rises, and PGD (which keeps its
    # best iterate) beats the clean loss on every row and FGSM on average
    adv_f = rb.cross_entropy(clf, rb.fgsm(clf, x, y, 0.5, norm=norm), y).detach()
    x_p = rb.pgd(clf, x, y, 0.5, norm=norm, n_steps=10, generator=3)
    adv_p = rb.cross_entropy(clf, x_p, y).detach()
    assert float(adv_f.mean()) > 2 * float(clean.mean())
    assert torch.all(adv_p > clean)
    assert float(adv_p.mean()) >= float(adv_f.mean())
    delta = x_p - x
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= 0.5 + 1e-12


def test_fgsm_is_the_exact_worst_case_for_a_linear_classifier():
    # softmax regression with two classes: the loss is softplus(-(w1 - w0).x - (b1 - b0)) for y = 1, so the
    # worst case over the L-inf ball lowers the margin by eps * ||w1 - w0||_1 and over the L2 ball by eps * ||.||_2
    clf = rb.SmallClassifier(3, 2, depth=0, generator=5)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.ones(50, dtype=torch.long)
    w = clf.net[0].weight.detach()
    b = clf.net[0].bias.detach()
    dw, db = w[1] - w[0], b[1] - b[0]
    eps = 0.3
    for norm, dual in [("linf", dw.abs().sum()), ("l2", dw.norm())]:
        expected = F.softplus(-(x @ dw + db) + eps * dual)
        assert torch.allclose(rb.cross_entropy(clf, rb.fgsm(clf, x, y, eps, norm=norm), y), expected, atol=1e-12)
        # PGD from the centre reaches the same maximum exactly (a vertex of the cube; the point of the sphere the
        # constant gradient points to); from a random start the L2 iterate approaches it geometrically
        got = rb.cross_entropy(clf, rb.pgd(clf, x, y, eps, norm=norm, n_steps=30, random_start=False), y)
        assert torch.allclose(got, expected, atol=1e-12)
        got = rb.cross_entropy(clf, rb.pgd(clf, x, y, eps, norm=norm, n_steps=30, generator=2), y)
        assert torch.all(got <= expected + 1e-12)
        assert torch.allclose(got, expected, rtol=1e-2 if norm == "l2" else 1e-12)


def test_zero_radius_attacks_return_the_input(problem):
    _, clf, x, y = problem
    assert torch.equal(rb.fgsm(clf, x, y, 0.0), x)
    assert torch.equal(rb.pgd(clf, x, y, 0.0, generator=0), x)


def test_purification_with_small_t_star_returns_the_input(problem):
    gm, _, x, _ = problem
    gaps = []
    for t_star in [1e-8, 1e-6, 1e-4]:
        out = rb.purify(x, gm, t_star, n_steps=5, generator=4)
        gaps.append(float((out - x).abs().max()))
    # the forward noise has scale sqrt(h(t*)) ~ sqrt(t*): the gap shrinks like it (max over 200 entries < 5 sd)
    assert gaps[0] < 5e-4
    assert gaps[0] < gaps[1] < gaps[2] < 5e-2


def test_purification_samples_the_gaussian_posterior():
    # data N(m, s^2 I): x_t* = a x + sqrt(h) eps, then a posterior draw given x_t*; for a fixed input x the output is
    # N(m + c (x - m), s^2 (1 - c^2)) with c = a^2 s^2 / (a^2 s^2 + h)
    sde = ConstantVP(T=4.0)
    m, s2 = 1.0, 0.5
    target = Gaussian([m, m], torch.eye(2, dtype=torch.float64) * s2, sde=sde)
    t_star, n = 0.5, 20000
    x = torch.full((n, 2), -0.5, dtype=torch.float64)
    out = rb.purify(x, target, t_star, n_steps=200, t0=1e-4, generator=7)
    a2, h = float(sde.alpha(t_star)) ** 2, float(sde.h(t_star))
    c = a2 * s2 / (a2 * s2 + h)
    mean, var = m + c * (-0.5 - m), s2 * (1 - c**2)
    # Monte Carlo: se of the mean sqrt(var / n) ~ 0.004, of the variance var * sqrt(2 / n) ~ 1%; 200 DDPM steps add
    # a discretisation bias of order 1e-3 (checked by halving the steps); tolerance 5 se
    assert abs(float(out.mean()) - mean) < 5 * (var / (2 * n)) ** 0.5 + 2e-3
    assert abs(float(out.var(0).mean()) / var - 1) < 5 * (2 / (2 * n)) ** 0.5 + 5e-3


def test_majority_vote_against_counting():
    gen = torch.Generator().manual_seed(0)
    votes = torch.randint(0, 3, (5, 300), generator=gen)
    got = rb.majority_vote(votes, 3)
    for i in range(votes.shape[1]):
        counts = Counter(votes[:, i].tolist())
        top = max(counts.values())
        assert int(got[i]) == min(c for c, k in counts.items() if k == top)
    assert torch.equal(rb.majority_vote(votes[:1]), votes[0])


def test_purified_predict_votes_and_reproducibility(problem):
    gm, clf, x, y = problem
    labels, votes = rb.purified_predict(clf, x, gm, 0.2, K=5, n_steps=10, return_votes=True, generator=11)
    assert votes.shape == (5, x.shape[0])
    assert torch.equal(labels, rb.majority_vote(votes, 2))
    again = rb.purified_predict(clf, x, gm, 0.2, K=5, n_steps=10, generator=11)
    assert torch.equal(labels, again)
    # a light purification keeps the clean accuracy of this classifier (overlap error ~ Phi(-1.5) ~ 7%)
    assert rb.accuracy(labels, y) > 0.8


def test_bad_inputs(problem):
    gm, clf, x, y = problem
    for t_star in [0.0, -1.0, 5.5, float("nan")]:
        with pytest.raises(ValueError, match="t_star"):
            rb.purify(x, gm, t_star)
        with pytest.raises(ValueError, match="t_star"):
            rb.purified_predict(clf, x, gm, t_star, K=3)
    with pytest.raises(ValueError, match="K"):
        rb.purified_predict(clf, x, gm, 0.5, K=0)
    with pytest.raises(ValueError, match="t0"):
        rb.purify(x, gm, 0.5, t0=0.6)
    for attack in [rb.fgsm, rb.pgd]:
        with pytest.raises(ValueError, match="radius"):
            attack(clf, x, y, -0.1)
        with pytest.raises(ValueError, match="norm"):
            attack(clf, x, y, 0.1, norm="l1")
    with pytest.raises(TypeError, match="classifier"):
        rb.fgsm("not a model", x, y, 0.1)
    with pytest.raises(TypeError):
        rb.fgsm(clf, x.numpy(), y, 0.1)
    with pytest.raises(ValueError, match="votes"):
        rb.majority_vote(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_classes"):
        rb.SmallClassifier(2, 1)
