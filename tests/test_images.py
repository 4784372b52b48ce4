"""Tests of diffnotes.images: the digits split, the conditional networks and samplers, the classifier, the Frechet
distance against closed forms, the memorisation check, and the errors on bad input."""

import math

import numpy as np
import pytest
import torch

from diffnotes import images as im
from diffnotes.metrics import gaussian_w2
from diffnotes.networks import with_label
from diffnotes.samplers import ddim, time_grid
from diffnotes.sde import ConstantVP

SDE = ConstantVP(T=8.0)


@pytest.fixture(scope="module")
def split():
    return im.load_digits_split()


@pytest.fixture(scope="module")
def small_score():
    """An untrained small conditional MLP score (the samplers only need the protocol)."""
    return im.digit_score_network("mlp", hidden=32, depth=2, sde=SDE, generator=0).eval()


# -- data --------------------------------------------------------------------------------------------------------
def test_split_is_fixed_stratified_disjoint_and_scaled(split):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_tr, y_tr, x_te, y_te = split
    assert x_tr.shape[1] == x_te.shape[1] == im.N_PIXELS
    assert x_tr.shape[0] + x_te.shape[0] == len(digits.target) == 1797
    # every class is split 80/20 up to the rounding of one image
    full = np.bincount(digits.target, minlength=10)
    test = np.bincount(y_te.numpy(), minlength=10)
    assert np.all(np.abs(test - 0.2 * full) <= 0.5)
    assert np.array_equal(test + np.bincount(y_tr.numpy(), minlength=10), full)
    # the two sets are disjoint and together are the data (as multisets of (image, label) rows)
    rows = lambda x, y: sorted(map(tuple, np.c_[im.to_pixels(x).numpy().round(), y.numpy()].tolist()))  # noqa: E731
    both = sorted(rows(x_tr, y_tr) + rows(x_te, y_te))
    assert both == sorted(map(tuple, np.c_[digits.data, digits.target].tolist()))
    # scale: levels 0..16 onto [-1, 1], inverted exactly by to_pixels
    assert float(x_tr.min()) == -1.0 and float(x_tr.max()) == 1.0
    assert torch.equal(im.to_pixels(im.to_unit(torch.arange(17.0))), torch.arange(17.0))
    again = im.load_digits_split()
    assert torch.equal(again.x_test, x_te) and torch.equal(again.y_train, y_tr)
    other = im.load_digits_split(generator=1)
    assert not torch.equal(other.y_test, y_te) or not torch.equal(other.x_test, x_te)
    # the deprecated seed= gives the same split, with a warning; both names at once are refused
    with pytest.warns(DeprecationWarning, match="seed="):
        old = im.load_digits_split(seed=1)
    assert torch.equal(old.x_test, other.x_test)
    assert torch.equal(im.load_digits_split(generator=np.random.default_rng(1)).y_test, other.y_test)
    with pytest.raises(TypeError, match="generator= only"):
        im.load_digits_split(generator=2, seed=1)


def test_check_images_accepts_the_three_layouts():
    x = torch.randn(5, 1, 8, 8)
    for layout in (x, x.reshape(5, 8, 8), x.reshape(5, 64)):
        assert torch.equal(im.check_images(layout), x.reshape(5, 64))


# -- networks and samplers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_networks_shapes_labels_and_seed(kind):
    net = im.digit_score_network(kind, sde=SDE, generator=3)
    x = torch.randn(7, 64, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 9, 10, 10])  # 10 is the null label
    out = net(x, y, 0.5)
    assert out.shape == (7, 64) and out.dtype == torch.float64 and torch.all(torch.isfinite(out))
    assert net.null_label == 10 and net.n_classes == 10
    # the label enters the output (this comparison can fail)
    assert (net(x, 3, 0.5) - net(x, 4, 0.5)).abs().max() > 1e-6
    # the initial weights come from the generator
    twin = im.digit_score_network(kind, sde=SDE, generator=3)
    assert torch.equal(twin(x, y, 0.5), out)
    assert not torch.equal(im.digit_score_network(kind, sde=SDE, generator=4)(x, y, 0.5), out)


def test_conditional_unet_accepts_image_layout_only_flat():
    net = im.ConditionalUNet((8,), generator=0)
    assert net(torch.randn(3, 64), torch.tensor([0, 5, 10]), torch.full((3,), 0.1)).shape == (3, 64)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(3, 63), 0, 0.1)


def test_samplers_run_on_the_networks(small_score):
    unet = im.digit_score_network("unet", channels=(8,), sde=SDE, generator=1).eval()
    for score in (small_score, unet):
        y = torch.arange(4)
        x = im.sample_digits(score, y, eta=1.5, n_steps=3, generator=0)
        assert x.shape == (4, 64) and x.dtype == torch.float64
        assert torch.all(x.abs() <= 1) and torch.all(torch.isfinite(x))
        u = im.sample_digits(score, None, n=3, n_steps=3, generator=0, sampler="ddpm")
        assert u.shape == (3, 64)
    # reproducible from the seed
    a = im.sample_digits(small_score, 2, n=3, n_steps=3, generator=5)
    assert torch.equal(a, im.sample_digits(small_score, 2, n=3, n_steps=3, generator=5))


def test_guided_sampler_is_the_plain_conditional_sampler_at_eta_zero(small_score):
    """eta = 0 is plain conditioning: the same start through DDIM with s(x, y, t) gives the same samples."""
    y = torch.tensor([1, 7, 7, 0])
    got = im.sample_digits(small_score, y, eta=0.0, sde=SDE, n_steps=4, generator=11, clip=False)
    start = torch.randn(4, 64, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    want = ddim(with_label(small_score, y), start, time_grid(SDE, 1e-3, 4, "logsnr"), sde=SDE, final_denoise=True)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    # one strength per row equals separate runs with each strength
    eta = torch.tensor([0.0, 2.0, 0.0, 2.0], dtype=torch.float64)
    rows = im.sample_digits(small_score, y, eta=eta, sde=SDE, n_steps=4, generator=11, clip=False)
    strong = im.sample_digits(small_score, y, eta=2.0, sde=SDE, n_steps=4, generator=11, clip=False)
    assert torch.allclose(rows[[0, 2]], got[[0, 2]], atol=1e-12) and torch.allclose(rows[[1, 3]], strong[[1, 3]],
                                                                                     atol=1e-12)
    assert (strong - got).abs().max() > 1e-6


def test_training_runs_and_lowers_the_loss(split):
    res = im.train_digit_score(split.x_train, split.y_train, steps=40, sde=SDE, generator=0,
                               model=im.digit_score_network("mlp", hidden=64, depth=2, sde=SDE, generator=0))
    assert res.losses.shape == (40,) and np.all(np.isfinite(res.losses))
    # an untrained noise predictor (output about 0) has h-weighted DSM loss E|eps|^2 = D = 64; it falls in 40 steps
    assert abs(res.losses[:5].mean() - 64) < 5
    assert res.losses[-5:].mean() < 0.9 * res.losses[:5].mean()
    assert res.ema_model is not None and res.ema_model.null_label == 10


# -- the classifier ------------------------------------------------------------------------------------------------
def test_classifier_learns_the_digits(split):
    clf = im.train_digit_classifier(split.x_train, split.y_train, generator=0)
    acc = clf.accuracy(split.x_test, split.y_test)
    assert acc >= 0.93  # a CNN reaches about 97 % on these digits; far below means training failed
    f = clf.features(split.x_test)
    assert f.shape == (split.x_test.shape[0], 64)
    conf = clf.confidence(split.x_test[:5], split.y_test[:5])
    assert conf.shape == (5,) and torch.all((conf > 0) & (conf <= 1))
    assert clf.accuracy(split.x_test.reshape(-1, 8, 8), split.y_test) == acc


# -- the Frechet distance -------------------------------------------------------------------------------------------
def _spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    # commuting (diagonal) covariances: |m1 - m2|^2 + sum (sqrt a - sqrt b)^2
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    m1, m2 = rng.standard_normal(6), rng.standard_normal(6)
    want = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert math.isclose(im.frechet_distance(m1, np.diag(a), m2, np.diag(b)), want, rel_tol=1e-10)
    # general covariances: the squared Bures-Wasserstein distance of diffnotes.metrics
    S1, S2 = _spd(8, rng), _spd(8, rng)
    m1, m2 = rng.standard_normal(8), rng.standard_normal(8)
    assert math.isclose(im.frechet_distance(m1, S1, m2, S2), gaussian_w2(m1, S1, m2, S2) ** 2, rel_tol=1e-8)
    assert im.frechet_distance(m1, S1, m1, S1) < 1e-10
    # dimension one: (m1 - m2)^2 + (s1 - s2)^2
    assert math.isclose(im.frechet_distance([1.0], [[4.0]], [0.0], [[1.0]]), 1.0 + 1.0, rel_tol=1e-12)


def _with_moments(n, mean, cov, rng):
    """n Gaussian features whose sample mean and (ddof = 1) covariance are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    L = np.linalg.cholesky(np.cov(z, rowvar=False))
    white = np.linalg.solve(L, z.T).T  # sample covariance exactly I
    return mean + white @ np.linalg.cholesky(cov).T


def test_feature_frechet_distance_on_gaussian_features():
    """Features with prescribed moments: the fitted distance is the closed form of the two Gaussians."""
    rng = np.random.default_rng(1)
    d = 5
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    S1, S2 = _spd(d, rng), _spd(d, rng)
    a, b = _with_moments(300, m1, S1, rng), _with_moments(200, m2, S2, rng)
    assert math.isclose(im.feature_frechet_distance(a, b), im.frechet_distance(m1, S1, m2, S2), rel_tol=1e-8)
    assert math.isclose(im.feature_frechet_distance(torch.as_tensor(a), b), im.feature_frechet_distance(a, b),
                        rel_tol=1e-12)
    # a translation moves only the mean term: exactly |c|^2
    c = rng.standard_normal(d)
    assert math.isclose(im.feature_frechet_distance(a, a + c), float(c @ c), rel_tol=1e-8)


def test_frechet_floor_and_ratio():
    """Samples from the reference law score about the floor; a shifted law scores far above it."""
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((400, 3))
    same = rng.standard_normal((200, 3))
    res = im.frechet_with_floor(same, ref, repeats=20, generator=0)
    assert res.n == 200 and len(res.values) == len(res.floor.values) == 20
    # each value is an average of 20 (paired) distances of relative spread about 1/2: ratio within [0.5, 2]
    assert 0.5 < res.ratio < 2.0
    shifted = im.frechet_with_floor(same + 1.0, ref, repeats=5, generator=0)
    assert shifted.ratio > 10  # |shift|^2 = 3 against a floor of order 2 d / n = 0.03
    again = im.frechet_with_floor(same, ref, repeats=20, generator=0)
    assert again.values == res.values


def test_frechet_floor_split_by_class():
    """With labels every class is halved: features that only encode the class then have a floor of 0."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), [20, 30, 24, 26])
    onehot = np.eye(4)[labels] * 10.0
    ref = onehot + 1e-3 * rng.standard_normal(onehot.shape)
    res = im.frechet_with_floor(ref, ref, labels=labels, repeats=5, generator=0)
    assert res.n == 50 and res.floor.mean < 1e-3
    random_halves = im.frechet_with_floor(ref, ref, repeats=5, generator=0)
    assert random_halves.floor.mean > 100 * res.floor.mean  # unequal class counts in random halves move the means
    with pytest.raises(ValueError, match="one integer class per reference row"):
        im.frechet_with_floor(ref, ref, labels=labels[:-1])


# -- memorisation --------------------------------------------------------------------------------------------------
def test_memorisation_check_tells_copies_from_fresh_data(split):
    x = torch.cat([split.x_train, split.x_test])
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    a, b, c, e = x[perm[:800]], x[perm[800:1100]], x[perm[1100:1400]], x[perm[1400:1700]]
    copies = im.memorisation_check(a[:300], a, b)  # every training image is searched: copies are found
    assert torch.all(copies.d_train == 0) and copies.fraction_copied() == 1.0 and copies.median_ratio() == 0
    fresh = im.memorisation_check(c, a, b)
    assert fresh.fraction_copied() < 0.05
    # two sets of fresh images checked against the same (train, test) sets give the same ratios up to Monte Carlo
    # error: medians of 300 ratios (spread about 0.3) agree within 0.1 (more than three standard errors)
    other = im.memorisation_check(e, a, b)
    assert abs(fresh.median_ratio() - other.median_ratio()) < 0.1
    # a train set as large as the test set: fresh images are equally close to both (median ratio near 1)
    even = im.memorisation_check(c, a[:300], b)
    assert 0.85 < even.median_ratio() < 1.15
    d = im.nearest_distances(c[:3], a)
    assert torch.allclose(d, torch.cdist(c[:3].double(), a.double()).min(1).values)
    with pytest.raises(ValueError, match="held out"):
        im.memorisation_check(b[:5], a, b)


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 63), (4, 8, 9), (4, 2, 8, 8), (64,)])
def test_wrong_image_size_is_refused(shape, small_score, split):
    bad = torch.zeros(shape)
    clf = im.DigitClassifier(generator=0)
    for call in (lambda: im.check_images(bad), lambda: clf.features(bad), lambda: clf.accuracy(bad, 0),
                 lambda: im.nearest_distances(bad, split.x_test),
                 lambda: im.memorisation_check(bad, split.x_train, split.x_test),
                 lambda: im.memorisation_check(split.x_test, bad, split.x_train),
                 lambda: im.train_digit_score(bad, torch.zeros(4, dtype=torch.long), steps=1)):
        with pytest.raises(ValueError, match="8x8 digits"):
            call()


def test_class_labels_outside_the_classes_are_refused(small_score, split):
    for y in (10, -1, torch.tensor([0, 12])):
        with pytest.raises(ValueError, match="digit classes 0..9"):
            im.sample_digits(small_score, y, n=2, n_steps=2)
    with pytest.raises(ValueError, match="digit classes 0..9"):
        im.train_digit_score(split.x_train[:2], torch.tensor([3, 10]), steps=1)
    with pytest.raises(ValueError, match="digit classes 0..9"):
        im.DigitClassifier(generator=0).accuracy(split.x_test[:2], torch.tensor([1, 10]))
    with pytest.raises(TypeError, match="integers"):
        im.sample_digits(small_score, torch.tensor([1.0, 2.0]), n_steps=2)
    with pytest.raises(ValueError, match="labels must lie in 0..10"):
        im.ConditionalUNet((8,), generator=0)(torch.zeros(2, 64), torch.tensor([0, 11]), 0.1)


def test_empty_batches_are_refused(small_score, split):
    empty = torch.zeros(0, 64)
    clf = im.DigitClassifier(generator=0)
    for call in (lambda: im.check_images(empty), lambda: clf.features(empty), lambda: clf.accuracy(empty, []),
                 lambda: im.memorisation_check(empty, split.x_train, split.x_test)):
        with pytest.raises(ValueError, match="at least 1 rows"):
            call()
    with pytest.raises(ValueError, match="empty"):
        im.sample_digits(small_score, [], n_steps=2)
    with pytest.raises(ValueError, match="positive integer"):
        im.sample_digits(small_score, None, n=0, n_steps=2)
    with pytest.raises(ValueError, match="at least 2"):
        im.feature_frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


def test_other_bad_inputs(small_score):
    with pytest.raises(TypeError, match="torch tensor"):
        im.check_images(np.zeros((2, 64)))
    with pytest.raises(TypeError, match="floating"):
        im.check_images(torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        im.check_images(torch.full((2, 64), float("nan")))
    with pytest.raises(ValueError, match="pass n"):
        im.sample_digits(small_score, None)
    with pytest.raises(ValueError, match="eta"):
        im.sample_digits(small_score, 1, n=2, eta=-1.0, n_steps=2)
    with pytest.raises(ValueError, match="one per row"):
        im.sample_digits(small_score, torch.arange(3), eta=[0.0, 1.0], n_steps=2)
    with pytest.raises(ValueError, match="sampler"):
        im.sample_digits(small_score, 1, n=2, sampler="nope")
    with pytest.raises(TypeError, match="null_label"):
        im.sample_digits(lambda x, y, t: x, 1, n=2)
    with pytest.raises(ValueError, match="kind"):
        im.digit_score_network("transformer")
    with pytest.raises(ValueError, match="test_fraction"):
        im.load_digits_split(1.0)
    with pytest.raises(ValueError, match="same feature dimension"):
        im.feature_frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="symmetric"):
        im.frechet_distance([0, 0], [[1, 0.5], [0, 1]], [0, 0], np.eye(2))
    with pytest.raises(ValueError, match="at least 100"):
        im.frechet_with_floor(np.zeros((10, 2)), np.random.default_rng(0).standard_normal((200, 2)))
