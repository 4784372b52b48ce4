r"""Guidance: conditional score functions built from an unconditional score and a classifier, or from one network.

Section 5.1 of the review (book chapter *Conditional diffusion and guidance*) samples :math:`P(\cdot\mid y)` with the
conditional score, which Bayes' rule splits as

.. math::

    \nabla\log p_t(x\mid y) = \nabla\log p_t(x) + \nabla_x\log c_t(y\mid x),

with :math:`c_t` a classifier of *diffused* data (classifier guidance, :cite:p:`dhariwal2021diffusion`).  The review
writes the strength of guidance with :math:`\eta\ge0`:

* classifier guidance: :math:`\nabla\log p_t(x) + (1 + \eta)\nabla_x\log c_t(y\mid x)`;
* classifier-free guidance :cite:p:`ho2022classifier`:
  :math:`(1 + \eta)\,s(x, y, t) - \eta\,s(x, \varnothing, t)`;

so :math:`\eta = 0` is plain conditioning (Bayes' rule) and, with exact scores, the two constructions coincide for
every :math:`\eta`: both equal :math:`\nabla\log p_t(x) + (1+\eta)\nabla\log c_t(y\mid x)`, the score of
:math:`p_t(x)\,c_t(y\mid x)^{1+\eta}` up to normalisation (which is not the score of a diffused law for
:math:`\eta > 0`).  Universal guidance :cite:p:`bansal2023universal` instead differentiates a *clean* criterion
through Tweedie's denoiser :math:`\hat x_0(x) = (x + h\,s(x, t))/\alpha`.

Every function returns a score function under the package protocol, ``score(x, t)`` with t a float or an (n,)
tensor, usable by every sampler.  The gradients are taken with :func:`torch.autograd.grad` inside
:func:`torch.enable_grad`, so guided scores work inside the samplers' ``torch.no_grad()``; they require that the model
and classifier treat the rows of x independently (true for MLPs and the exact targets) and return detached values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from . import _checks
from .losses import _interval, _reduce, _times_and_noise
from .networks import SinusoidalEmbedding, _mlp, _param_like, seeded
from .sde import VPSDE

__all__ = [
    "classifier_guidance",
    "classifier_free_guidance",
    "universal_guidance",
    "with_null_label",
    "NullExtendedScore",
    "clean_log_classifier",
    "NoisyClassifier",
    "noisy_classifier_loss",
    "centre_stiffness",
    "ddpm_step_factors",
    "split_threshold",
]


# -- helpers ----------------------------------------------------------------------------------------------------
def _check_strength(eta, name: str = "eta"):
    """A non-negative number, or a callable of time checked when called."""
    if callable(eta):
        return eta
    if isinstance(eta, bool):
        raise TypeError(f"{name} must be a number or a callable of t, got a bool")
    try:
        value = float(eta)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number or a callable of t, got {eta!r}") from err
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"the guidance strength {name} must be finite and >= 0 ({name} = 0 is plain conditioning), "
                         f"got {eta}")
    return value


def _strength_column(eta, t_rows: torch.Tensor, name: str = "eta") -> torch.Tensor:
    """The strength at the times of the rows, as an (n, 1) tensor."""
    value = eta(t_rows) if callable(eta) else eta
    value = torch.as_tensor(value, dtype=t_rows.dtype, device=t_rows.device)
    value = value.expand(t_rows.shape) if value.ndim == 0 else value.reshape(-1)
    if value.shape != t_rows.shape:
        raise ValueError(f"{name}(t) must return a number or one value per row, got shape {tuple(value.shape)}")
    if not torch.all(torch.isfinite(value)) or torch.any(value < 0):
        raise ValueError(f"the guidance strength {name}(t) must be finite and >= 0")
    return value[:, None]


def _check_label_values(y, n_classes, null_label=None) -> torch.Tensor:
    """Validate class ids given at construction (one label or a 1-D array)."""
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim > 1:
        raise TypeError(f"y must be one integer label or a 1-D array of them, got dtype {y.dtype}, shape "
                        f"{tuple(y.shape)}")
    y = y.long()
    values = set(y.reshape(-1).tolist())
    if any(v < 0 for v in values):
        raise ValueError(f"class labels must be >= 0, got {sorted(values)}")
    if null_label is not None and int(null_label) in values:
        raise ValueError(f"y must be a class id, not the null label {null_label}")
    if n_classes is not None and any(v >= n_classes for v in values):
        raise ValueError(f"class labels must lie in 0..{n_classes - 1}, got {sorted(values)}")
    return y


def _select(log_probs: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """Pick column y of an (n, C) array of log-probabilities, checking y against C."""
    if not isinstance(log_probs, torch.Tensor) or log_probs.ndim != 2 or log_probs.shape[0] != n:
        raise ValueError(f"the classifier must return (n, C) = ({n}, C) log-probabilities, got "
                         f"{getattr(log_probs, 'shape', type(log_probs))}")
    C = log_probs.shape[1]
    rows = _checks.labels(y, n, device=log_probs.device)
    if torch.any(rows >= C):
        raise ValueError(f"class labels must lie in 0..{C - 1} for this classifier, got {sorted(set(rows.tolist()))}")
    return log_probs.gather(1, rows[:, None]).squeeze(1)


def _guidance_gradient(log_classifier, y, x, t):
    r""":math:`\nabla_x\log c_t(y\mid x)` by autograd (rows independent)."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        picked = _select(log_classifier(xr, t), y, x.shape[0])
        (grad,) = torch.autograd.grad(picked.sum(), xr)
    return grad


# -- classifier guidance -------------------------------------------------------------------------------------------
def classifier_guidance(score: Callable, log_classifier: Callable, y, eta=0.0, *,
                        n_classes: int | None = None) -> Callable:
    r"""Classifier guidance: :math:`\tilde s(x, t) = s(x, t) + (1 + \eta)\,\nabla_x\log c_t(y\mid x)`.

    With :math:`\eta = 0`, an exact score and the exact noise-aware classifier this is the conditional score
    :math:`\nabla\log p_t(x\mid y)` (Bayes' rule; inventory claim T18); :math:`\eta > 0` strengthens the guidance in
    the review's convention (Section 5.1; book chapter *Conditional diffusion and guidance*).  The classifier is
    trained on *diffused* data :cite:p:`dhariwal2021diffusion`: exact for the mixtures of :mod:`diffnotes.targets`
    (``target.class_log_posterior``), learned otherwise (:class:`NoisyClassifier`).

    Parameters
    ----------
    score : callable
        The unconditional score ``s(x, t)``.
    log_classifier : callable
        ``log_classifier(x, t)`` returning (n, C) log-probabilities :math:`\log c_t(\cdot\mid x)`.
    y : int or array of ints
        The class to guide to (one, or one per row).
    eta : float or callable
        Strength :math:`\eta\ge0`, or a function of the (n,) times returning non-negative values.
    n_classes : int, optional
        Number of classes C, to validate y now (it is always checked against the classifier's output).

    Returns
    -------
    callable
        The guided score function ``score(x, t)``.
    """
    if not callable(score) or not callable(log_classifier):
        raise TypeError("score and log_classifier must be callables of (x, t)")
    eta = _check_strength(eta)
    if n_classes is None:
        n_classes = getattr(log_classifier, "n_classes", getattr(getattr(log_classifier, "__self__", None),
                                                                 "n_classes", None))
    y = _check_label_values(y, n_classes)

    def guided(x: torch.Tensor, t) -> torch.Tensor:
        x = _checks.points(x, "x")
        t_rows = _checks.time_rows(t, x.shape[0], x)
        grad = _guidance_gradient(log_classifier, y, x, t_rows)
        return score(x, t_rows) + (1 + _strength_column(eta, t_rows)) * grad

    guided.eta, guided.y = eta, y
    return guided


# -- classifier-free guidance ------------------------------------------------------------------------------------
class NullExtendedScore:
    r"""A conditional score function that returns the unconditional score at the null label.

    ``s(x, y, t)`` is ``cond_score(x, y, t)`` for class ids and ``score(x, t)`` where ``y == null_label``: the form of
    a network trained with label dropout, built here from two known scores (e.g. an exact target's
    ``conditional_score`` and ``score``).

    Parameters
    ----------
    cond_score : callable
        The conditional score ``cond_score(x, y, t)`` used for the class ids.
    score : callable
        The unconditional score ``score(x, t)`` used at the null label.
    null_label : int
        The label that selects ``score``; must not be a class id 0..C-1 when ``n_classes`` is given.
    n_classes : int, optional
        Number of classes C (only used to check ``null_label``).
    """

    def __init__(self, cond_score: Callable, score: Callable, null_label: int, n_classes: int | None = None):
        if not callable(cond_score) or not callable(score):
            raise TypeError("cond_score must be a callable (x, y, t) and score a callable (x, t)")
        if n_classes is not None and 0 <= int(null_label) < int(n_classes):
            raise ValueError(f"the null label must not be a class id 0..{int(n_classes) - 1}, got {null_label}")
        self.cond_score, self.score = cond_score, score
        self.null_label = int(null_label)
        self.n_classes = int(n_classes) if n_classes is not None else None

    def __call__(self, x: torch.Tensor, y, t) -> torch.Tensor:
        x = _checks.points(x, "x")
        n = x.shape[0]
        y = _checks.labels(y, n, device=x.device)
        t_rows = _checks.time_rows(t, n, x)
        null = y == self.null_label
        out = torch.empty_like(x)
        if torch.any(null):
            out[null] = self.score(x[null], t_rows[null]).to(x)
        if not torch.all(null):
            keep = ~null
            out[keep] = self.cond_score(x[keep], y[keep], t_rows[keep]).to(x)
        return out

    def __repr__(self) -> str:
        return f"NullExtendedScore(null_label={self.null_label}, n_classes={self.n_classes})"


def with_null_label(cond_score: Callable, score: Callable, null_label: int | None = None, *,
                    n_classes: int | None = None) -> NullExtendedScore:
    r"""Join a conditional score and an unconditional score into one function of (x, y, t) with a null label.

    For an exact target: ``with_null_label(target.conditional_score, target.score, n_classes=target.n_classes)``
    is the ideal classifier-free-guidance network, :math:`s(x, \varnothing, t) = \nabla\log p_t(x)` (review Section
    5.1; :cite:p:`ho2022classifier`).  The null label defaults to C = ``n_classes``.

    Parameters
    ----------
    cond_score : callable
        The conditional score ``cond_score(x, y, t)``.
    score : callable
        The unconditional score ``score(x, t)``.
    null_label : int, optional
        The null label (default ``n_classes``); not a class id.
    n_classes : int, optional
        Number of classes C; read from ``cond_score.n_classes`` (or its bound object's) when not given.  One of
        ``null_label`` and ``n_classes`` must be known (``TypeError`` otherwise).

    Returns
    -------
    NullExtendedScore
        The joined score ``s(x, y, t)``.
    """
    if n_classes is None:
        n_classes = getattr(cond_score, "n_classes", getattr(getattr(cond_score, "__self__", None), "n_classes", None))
    if null_label is None:
        if n_classes is None:
            raise TypeError("pass null_label or n_classes (the null label defaults to C = n_classes)")
        null_label = int(n_classes)
    return NullExtendedScore(cond_score, score, null_label, n_classes)


def classifier_free_guidance(cond_score: Callable, y, eta=0.0, null_label: int | None = None, *,
                             n_classes: int | None = None) -> Callable:
    r"""Classifier-free guidance: :math:`\tilde s(x, t) = (1 + \eta)\,s(x, y, t) - \eta\,s(x, \varnothing, t)`.

    One network trained with label dropout (:func:`diffnotes.losses.conditional_dsm_loss`) provides both terms
    :cite:p:`ho2022classifier`.  :math:`\eta = 0` gives the conditional score; for :math:`\eta > 0`, :math:`\tilde s`
    is not the score of any diffused law, and with exact scores it equals classifier guidance of the same strength,
    :math:`\nabla\log p_t(x) + (1+\eta)\nabla\log c_t(y\mid x)`.  Review Section 5.1 (strength: Section 5.3); book
    chapter *Conditional diffusion and guidance*.

    Parameters
    ----------
    cond_score : callable
        ``cond_score(x, y, t)``, accepting the null label (a :class:`~diffnotes.networks.ConditionalScoreMLP`
        wrapped by :func:`~diffnotes.networks.as_score`, or :func:`with_null_label`).
    y : int or array of ints
        The class (one, or one per row); never the null label.
    eta : float or callable
        Strength :math:`\eta\ge0`, or a function of the (n,) times.
    null_label : int, optional
        Default: ``cond_score.null_label``.
    n_classes : int, optional
        Number of classes, to validate y (default ``cond_score.n_classes`` if present).

    Returns
    -------
    callable
        The guided score function ``score(x, t)``.
    """
    if not callable(cond_score):
        raise TypeError("cond_score must be a callable (x, y, t)")
    eta = _check_strength(eta)
    if null_label is None:
        null_label = getattr(cond_score, "null_label", None)
        if null_label is None:
            raise TypeError("pass null_label: cond_score has no null_label attribute")
    null_label = int(null_label)
    if n_classes is None:
        n_classes = getattr(cond_score, "n_classes", None)
    y = _check_label_values(y, n_classes, null_label)

    def guided(x: torch.Tensor, t) -> torch.Tensor:
        x = _checks.points(x, "x")
        n = x.shape[0]
        t_rows = _checks.time_rows(t, n, x)
        yr = _checks.labels(y, n, device=x.device)
        w = _strength_column(eta, t_rows)
        cond = cond_score(x, yr, t_rows)
        if not callable(eta) and eta == 0:
            return cond
        null = cond_score(x, torch.full_like(yr, null_label), t_rows)
        return (1 + w) * cond - w * null

    guided.eta, guided.y, guided.null_label = eta, y, null_label
    return guided


# -- universal guidance -----------------------------------------------------------------------------------------
def universal_guidance(score: Callable, log_likelihood_x0: Callable, sde: VPSDE | None = None, strength=1.0, *,
                       y=None) -> Callable:
    r"""Universal guidance: a clean-data criterion differentiated through Tweedie's denoiser.

    .. math::

        \tilde s(x, t) = s(x, t) + \lambda\,\nabla_x \log f\big(y\mid\hat x_0(x, t)\big),\qquad
        \hat x_0(x, t) = \frac{x + h(t)\,s(x, t)}{\alpha(t)},

    the forward guidance of Bansal et al. :cite:p:`bansal2023universal` with the loss
    :math:`\ell = -\log f` (cross-entropy when f is a classifier).  The gradient flows through the score, i.e.
    through the Jacobian of :math:`\hat x_0`.  When f is the clean classifier :math:`c_0` and :math:`\lambda = 1`
    this approaches classifier guidance with :math:`\eta = 0` as :math:`t\to0` (where :math:`\hat x_0\to x` and
    :math:`c_t\to c_0`) and differs from it at large t, where :math:`\log c_0(y\mid\hat x_0)` is not
    :math:`\log c_t(y\mid x)` (inventory claim T22).  Review Section 5.1; book chapter *Conditional diffusion and
    guidance*.

    Parameters
    ----------
    score : callable
        The unconditional score ``s(x, t)``; it must support autograd with respect to x.
    log_likelihood_x0 : callable
        ``f(x0)``: (n,) log-likelihoods, or (n, C) log-probabilities when ``y`` is given (e.g.
        :func:`clean_log_classifier`).
    sde : VPSDE, optional
        The forward process of the score (default :class:`~diffnotes.sde.ConstantVP`).
    strength : float or callable
        :math:`\lambda\ge0` (the review's :math:`1+\eta`), or a function of the (n,) times.
    y : int or array of ints, optional
        The class to select from an (n, C) output.

    Returns
    -------
    callable
        The guided score function ``score(x, t)``.
    """
    if not callable(score) or not callable(log_likelihood_x0):
        raise TypeError("score must be a callable (x, t) and log_likelihood_x0 a callable (x0)")
    sde = _checks.sde_or_default(sde)
    strength = _check_strength(strength, "strength")
    if y is not None:
        y = _check_label_values(y, getattr(log_likelihood_x0, "n_classes", None))

    def guided(x: torch.Tensor, t) -> torch.Tensor:
        x = _checks.points(x, "x")
        n = x.shape[0]
        t_rows = sde.check_time(_checks.time_rows(t, n, x)).to(x)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            s = score(xr, t_rows)
            x0_hat = sde.denoise(xr, s, t_rows)
            ll = log_likelihood_x0(x0_hat)
            if y is not None:
                ll = _select(ll, y, n)
            elif not isinstance(ll, torch.Tensor) or ll.shape != (n,):
                raise ValueError(f"log_likelihood_x0 must return ({n},) values (or pass y with (n, C) outputs), "
                                 f"got {getattr(ll, 'shape', type(ll))}")
            (grad,) = torch.autograd.grad(ll.sum(), xr)
        return s.detach() + _strength_column(strength, t_rows, "strength") * grad

    guided.strength, guided.y = strength, y
    return guided


def clean_log_classifier(target) -> Callable:
    r"""The exact clean classifier :math:`\log c_0(y\mid x)` of a Gaussian-mixture target, a function of x.

    .. math::

        c_0(y\mid x) = \frac{\sum_{k:\,\ell_k = y}\pi_k\,\mathsf N(x;\mu_k,\Sigma_k)}{\sum_k\pi_k\,\mathsf N(x;\mu_k,
        \Sigma_k)},

    the classifier of *undiffused* data that universal guidance evaluates at :math:`\hat x_0` (inventory claim
    T22; review Section 5.1; :cite:p:`bansal2023universal`).  Returns ``f(x)`` with (n, C) log-probabilities.  The
    covariances must be non-singular (not a :class:`~diffnotes.targets.SubspaceMixture`).

    Parameters
    ----------
    target : diffnotes.targets.GaussianMixture
        A labelled Gaussian mixture (attributes ``weights``, ``means``, ``covs``, ``labels``; ``TypeError``
        otherwise) with full-rank covariances (``ValueError`` for a subspace mixture).

    Returns
    -------
    callable
        ``f(x)``: log-probabilities (n, C) of the classes for points x (n, D); ``f.n_classes`` is C.
    """
    for attr in ("weights", "means", "covs", "labels"):
        if not hasattr(target, attr):
            raise TypeError(f"target must be a Gaussian mixture (missing attribute {attr!r})")
    if getattr(target, "_allow_singular", False):
        raise ValueError("the clean classifier of data on a subspace is degenerate; use a full-rank mixture")
    weights, means, covs, labels = target.weights, target.means, target.covs, target.labels
    n_classes = int(labels.max()) + 1
    onehot = torch.nn.functional.one_hot(labels, n_classes).bool()

    def log_classifier(x: torch.Tensor) -> torch.Tensor:
        x = _checks.points(x, "x", means.shape[1])
        comp = torch.distributions.MultivariateNormal(means.to(x), covariance_matrix=covs.to(x))
        lj = torch.log(weights.to(x))[None] + comp.log_prob(x[:, None, :])  # (n, K)
        mask = onehot.to(x.device)[None]  # (1, K, C)
        per_class = torch.logsumexp(lj[:, :, None].masked_fill(~mask, -math.inf), dim=1)
        return per_class - torch.logsumexp(lj, dim=1, keepdim=True)

    log_classifier.n_classes = n_classes
    return log_classifier


# -- a learned noise-aware classifier ---------------------------------------------------------------------------
class NoisyClassifier(nn.Module):
    r"""A time-dependent classifier :math:`c_t(y\mid x)` of diffused data: an MLP returning log-probabilities.

    The input is x and a sinusoidal embedding of :math:`\log t` (as :class:`~diffnotes.networks.ScoreMLP`); the
    output is ``log_softmax`` over C classes, the ``log_classifier`` that :func:`classifier_guidance` expects.  Train
    it with :func:`noisy_classifier_loss` on diffused data :cite:p:`dhariwal2021diffusion` (review Section 5.1: it
    is hard to train at high noise, which limits classifier guidance; book chapter *Conditional diffusion and
    guidance*).  Computations follow the dtype and device of the parameters; the output is in the dtype of x.

    Parameters
    ----------
    dim : int
        Data dimension D.
    n_classes : int
        Number of classes C.
    hidden, depth : int
        Width and number of hidden layers.
    time_embedding : {"log", "linear"}
        Embed :math:`\log t` or t.
    embedding_dim : int
        Width of the time embedding.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights (see :func:`~diffnotes.networks.seeded`); default torch's global generator.
    """

    def __init__(self, dim: int, n_classes: int, hidden: int = 64, depth: int = 2, time_embedding: str = "log",
                 embedding_dim: int = 32, *, generator=None):
        super().__init__()
        _checks.sizes(dim=dim, n_classes=n_classes, hidden=hidden, depth=depth)
        self.dim, self.n_classes = int(dim), int(n_classes)
        self.embedding = SinusoidalEmbedding(embedding_dim, time_embedding)
        with seeded(generator):
            self.net = _mlp(self.dim + self.embedding.n_features, int(hidden), int(depth), self.n_classes)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """Log-probabilities (n, C) of the classes given x (n, D) at times t (a float or (n,)).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row.

        Returns
        -------
        torch.Tensor
            Log-probabilities, shape (n, C), in the dtype and on the device of ``x``.
        """
        x = _checks.points(x, "x", self.dim)
        p = _param_like(self)
        xp = x.to(dtype=p.dtype, device=p.device)
        logits = self.net(torch.cat([xp, self.embedding(_checks.time_rows(t, x.shape[0], xp))], dim=1))
        return torch.log_softmax(logits, dim=1).to(dtype=x.dtype, device=x.device)


def noisy_classifier_loss(classifier: Callable, x0: torch.Tensor, y, t0: float = 1e-3, T: float | None = None, *,
                          sde: VPSDE | None = None, generator: torch.Generator | None = None, t=None, eps=None,
                          reduction: str = "mean") -> torch.Tensor:
    r"""Cross-entropy of a noise-aware classifier on diffused data.

    .. math::

        \frac{1}{T - t_0}\int_{t_0}^T\mathbb E_{(x_0, y)}\mathbb E_\varepsilon
        \big[-\log c_t\big(y\mid\alpha(t)x_0 + \sqrt{h(t)}\,\varepsilon\big)\big]\,\mathrm dt,

    minimised by the exact posterior :math:`c_t(y\mid x) = P(Y = y\mid X_t = x)` (review Section 5.1;
    :cite:p:`dhariwal2021diffusion`).  Arguments as in :func:`diffnotes.losses.dsm_loss`; ``classifier(x, t)``
    returns (n, C) log-probabilities and ``y`` holds (n,) integer labels.

    Parameters
    ----------
    classifier : callable
        ``classifier(x, t)`` returning (n, C) log-probabilities (e.g. a :class:`NoisyClassifier`).
    x0 : torch.Tensor
        Clean data, shape (n, D).
    y : array_like of int
        One label per row of ``x0``, shape (n,), integers >= 0.
    t0 : float
        Early-stopping time, :math:`0 < t_0 < T` (default 1e-3).
    T : float, optional
        Horizon, in (0, sde.T] (default ``sde.T``).
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the times and noise.
    t : float or torch.Tensor, optional
        Given times (one, or one per row), replacing the uniform draws on [t0, T].
    eps : torch.Tensor, optional
        Given noise shaped like ``x0``, replacing the Gaussian draws.
    reduction : {"mean", "none"}
        Return the batch mean (a scalar) or the per-sample terms (n,).

    Returns
    -------
    torch.Tensor
        The cross-entropy.
    """
    generator = _checks.generator(generator)
    sde = _checks.sde_or_default(sde)
    x0 = _checks.sample(x0)
    t0, T = _interval(sde, t0, T)
    if not callable(classifier):
        raise TypeError("classifier must be a callable (x, t) returning (n, C) log-probabilities")
    n = x0.shape[0]
    y = torch.as_tensor(y, device=x0.device)
    if y.is_floating_point() or y.dtype == torch.bool or y.shape != (n,):
        raise ValueError(f"y must hold one integer label per row of x0 (shape ({n},)), got dtype {y.dtype} and "
                         f"shape {tuple(y.shape)}")
    if torch.any(y < 0):
        raise ValueError("labels must be >= 0")
    t, eps = _times_and_noise(x0, sde, t0, T, generator, t, eps)
    xt = sde.alpha(t[:, None]) * x0 + torch.sqrt(sde.h(t[:, None])) * eps
    return _reduce(-_select(classifier(xt, t), y.long(), n), reduction)


# -- the stability of guided DDPM at a mixture's centre (review Section 5.3; Fig. 7) --------------------------------
def _line_mixture(mixture):
    means, covs = mixture.means, mixture.covs
    if means.shape[1] != 1:
        raise ValueError(f"the centre analysis is for a one-dimensional mixture, got dimension {means.shape[1]}")
    var = covs.reshape(-1)
    if not torch.allclose(var, var[0].expand_as(var)):
        raise ValueError("the centre analysis needs components of one common variance")
    return means[:, 0].to(torch.float64), float(var[0])


def centre_stiffness(mixture, t, x: float = 0.0) -> torch.Tensor:
    r"""The curvature :math:`c(t)` that classifier-free guidance adds at a point of a 1-D mixture.

    For a one-dimensional Gaussian mixture whose components share the variance :math:`\sigma^2`, the diffused
    component laws are :math:`\mathsf N(\alpha\mu_k, v)` with :math:`v = \alpha^2\sigma^2 + h`, and at the point
    x the guided score of the component ``y`` centred there, :math:`(1+\eta)\nabla\log p_t(x\mid y) -
    \eta\nabla\log p_t(x)`, has the derivative :math:`-(1 + \eta c(t))/v` with

    .. math::

        c(t) = \frac{\alpha(t)^2\,\mathrm{Var}(\mu_K \mid X_t = x)}{v(t)},

    the posterior variance of the component mean (weights :meth:`~diffnotes.targets.GaussianMixture.posterior`).
    It peaks where the components separate; book chapters *The strength of guidance* (T21) and *Open questions*.

    Parameters
    ----------
    mixture : diffnotes.targets.GaussianMixture
        One-dimensional, components of equal variance.
    t : float or 1-D tensor
        Times in (0, T].
    x : float
        The point (the centre of the guided component, 0 by default).

    Returns
    -------
    torch.Tensor
        c(t), shape (n,), float64.
    """
    centres, var = _line_mixture(mixture)
    sde = mixture.sde
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    a, v = sde.alpha(t), sde.alpha(t) ** 2 * var + sde.h(t)
    w = mixture.posterior(torch.full((t.numel(), 1), float(x), dtype=torch.float64), t)
    return a**2 * ((w * centres**2).sum(1) - (w * centres).sum(1) ** 2) / v


def _step_terms(mixture, grid):
    grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
    if grid.numel() < 2 or torch.any(grid[1:] >= grid[:-1]):
        raise ValueError("grid must be a decreasing sequence of at least two times (as time_grid returns)")
    _, var = _line_mixture(mixture)
    sde = mixture.sde
    t, t_next = grid[:-1], grid[1:]
    beta = 1 - sde.alpha(t) ** 2 / sde.alpha(t_next) ** 2
    return t, beta, sde.alpha(t) ** 2 * var + sde.h(t)


def ddpm_step_factors(mixture, grid, eta: float) -> torch.Tensor:
    r"""The derivative at the centre of each guided DDPM step's mean map, :math:`d(t_k)`.

    The DDPM step :math:`x \mapsto (x + \beta_k s(x, t_k))/\sqrt{1-\beta_k}` with the guided score of
    :func:`centre_stiffness` has, at the centre, the slope

    .. math::

        d(t_k) = \frac{1 - \beta_k(1 + \eta c(t_k))/v(t_k)}{\sqrt{1 - \beta_k}},\qquad
        \beta_k = 1 - \alpha(t_k)^2/\alpha(t_{k+1})^2 .

    A step with :math:`d < -1` makes the centre repelling: the middle component splits (review Fig. 7; book chapter
    *The strength of guidance*).  Returns one factor per step, shape (N,).

    Parameters
    ----------
    mixture : diffnotes.targets.GaussianMixture
        One-dimensional, components of equal variance.
    grid : array_like
        A decreasing grid of at least two times (as :func:`~diffnotes.samplers.time_grid` returns).
    eta : float
        The guidance strength, finite and >= 0.

    Returns
    -------
    torch.Tensor
        :math:`d(t_k)` for each of the N steps, float64.
    """
    eta = float(_check_strength(eta))
    t, beta, v = _step_terms(mixture, grid)
    return (1 - beta * (1 + eta * centre_stiffness(mixture, t)) / v) / torch.sqrt(1 - beta)


def split_threshold(mixture, grid) -> float:
    r"""The smallest guidance strength at which some step of the grid has :math:`d(t_k) < -1` (see
    :func:`ddpm_step_factors`): :math:`\eta_c = \min_k \big((1 + \sqrt{1-\beta_k})v_k/\beta_k - 1\big)/c(t_k)`.

    Parameters
    ----------
    mixture : diffnotes.targets.GaussianMixture
        One-dimensional, components of equal variance.
    grid : array_like
        A decreasing grid of at least two times (as :func:`~diffnotes.samplers.time_grid` returns).

    Returns
    -------
    float
        The threshold :math:`\eta_c`.
    """
    t, beta, v = _step_terms(mixture, grid)
    return float((((1 + torch.sqrt(1 - beta)) * v / beta - 1) / centre_stiffness(mixture, t)).min())
