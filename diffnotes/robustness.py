r"""Adversarial attacks and diffusion purification with a majority vote (review Section 7.2).

The review's future directions (Section 7.2, :cite:p:`chen2024opportunities`) name diffusion models as a defence
against adversarial examples: an input :math:`x`, possibly attacked, is first **diffused** to a time :math:`t^*`,

.. math::

    x_{t^*} = \alpha(t^*)\,x + \sqrt{h(t^*)}\,\varepsilon,\qquad \varepsilon \sim \mathsf N(0, I),

then carried **back** to (nearly) :math:`t = 0` by the backward process driven by a score :math:`\nabla\log p_t`
of the clean data, and only then classified (DiffPure, :cite:t:`nie2022diffusion`).  With the exact score and an
exact backward process, the purified point is a draw from the posterior :math:`p(x_0 \mid x_{t^*})` of the data
law: the noise drowns the small adversarial perturbation, the backward process puts the point back onto the data.
DensePure :cite:p:`xiao2023densepure` purifies :math:`K` times with independent noise and takes the **majority vote**
of the :math:`K` labels,

.. math::

    \hat y(x) = \arg\max_c\ \#\{k \le K : f(\mathrm{pur}_k(x)) = c\},

which, as :math:`K \to \infty`, labels :math:`x` by the class of highest posterior mass under
:math:`p(x_0 \mid x_{t^*})` pushed through the classifier :math:`f`.  The time :math:`t^*` trades robustness (enough
noise to wash out the attack) against accuracy (too much noise washes out the class as well): robust accuracy
against :math:`t^*` is an inverted U.

The attacks are the two standard first-order ones on a differentiable classifier with logits :math:`f_\theta(x)`
and the cross-entropy loss :math:`\ell(x, y)`:

* FGSM :cite:p:`goodfellow2015explaining`, one step to the edge of the ball,
  :math:`x' = x + \epsilon\,\mathrm{sign}\,\nabla_x\ell` (:math:`L^\infty`) or
  :math:`x' = x + \epsilon\,\nabla_x\ell / \|\nabla_x\ell\|_2` (:math:`L^2`);
* PGD :cite:p:`madry2018towards`, projected gradient ascent from a random start in the ball,
  :math:`x^{k+1} = \Pi_{B_\epsilon(x)}\big(x^k + \gamma\,d(\nabla_x\ell(x^k, y))\big)` with the same step
  directions :math:`d`.

Every function that draws takes ``generator=`` (an int seed, a :class:`torch.Generator` or a numpy Generator).
Book chapter: *Adversarial robustness and distributionally robust optimization*.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .networks import seeded
from .samplers import ddpm, time_grid

__all__ = [
    "SmallClassifier",
    "train_classifier",
    "cross_entropy",
    "fgsm",
    "pgd",
    "purify",
    "majority_vote",
    "purified_predict",
    "accuracy",
    "NORMS",
]

#: The attack norms: the ball :math:`\|x' - x\| \le \epsilon` of each, per row.
NORMS = ("linf", "l2")


# -- checks --------------------------------------------------------------------------------------------------------
def _radius(value, name: str = "radius") -> float:
    try:
        r = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, got {value!r}") from err
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return r


def _norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _classifier(classifier) -> Callable:
    if not callable(classifier):
        raise TypeError(f"classifier must be a callable x -> logits (n, C), got {type(classifier).__name__}")
    return classifier


def _logits(classifier, x: torch.Tensor) -> torch.Tensor:
    out = classifier(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"classifier(x) must return logits of shape ({x.shape[0]}, C), got "
                         f"{getattr(out, 'shape', type(out))}")
    return out


# -- a small classifier --------------------------------------------------------------------------------------------
class SmallClassifier(nn.Module):
    """A multilayer perceptron :math:`x \\mapsto` logits, the small classifier that the attacks and purification use.

    Parameters
    ----------
    dim : int
        Input dimension D.
    n_classes : int
        Number of classes C (at least 2).
    hidden : int
        Width of the hidden layers; ``depth = 0`` gives logistic (softmax) regression.
    depth : int
        Number of hidden layers (SiLU activations).
    generator : None, int, torch.Generator or numpy Generator
        Source of the initial weights.
    dtype : torch.dtype
        Parameter dtype (float64 by default, as the exact targets).
    """

    def __init__(self, dim: int, n_classes: int = 2, hidden: int = 32, depth: int = 2, *, generator=None,
                 dtype=torch.float64):
        super().__init__()
        dim = _checks.positive_int(dim, "dim")
        n_classes = _checks.positive_int(n_classes, "n_classes", minimum=2)
        hidden = _checks.positive_int(hidden, "hidden")
        depth = _checks.positive_int(depth, "depth", minimum=0)
        layers: list[nn.Module] = []
        width = dim
        with seeded(generator):
            for _ in range(depth):
                layers += [nn.Linear(width, hidden), nn.SiLU()]
                width = hidden
            layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers).to(dtype)
        self.dim, self.n_classes = dim, n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits, shape (n, C).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        """
        return self.net(_checks.points(x, "x", self.dim))


def train_classifier(model: nn.Module, x, y, *, steps: int = 500, lr: float = 1e-2, weight_decay: float = 0.0,
                     batch_size: int | None = None, generator=None) -> list[float]:
    r"""Fit ``model`` (logits) to labelled points by Adam on the cross-entropy; return the loss per step.

    Adam :cite:p:`kingma2015adam` with :math:`\beta = (0.9, 0.999)`, its bias corrections, and an L2 penalty
    ``weight_decay`` added to the gradient (as ``torch.optim.Adam`` does), on
    :math:`\frac1n\sum_i -\log\mathrm{softmax}(f(x_i))_{y_i}`.

    Parameters
    ----------
    model : nn.Module
        The classifier (e.g. :class:`SmallClassifier`); trained in place.
    x : torch.Tensor
        Points, shape (n, D).
    y : array_like of int
        Labels, shape (n,).
    steps : int
        Number of Adam steps.
    lr, weight_decay : float
        Adam's learning rate and (L2) weight decay.
    batch_size : int, optional
        Minibatch size (default: full batch, deterministic).
    generator : None, int, torch.Generator or numpy Generator
        Source of the minibatch draws.
    """
    x = _checks.points(x, "x")
    y = _checks.labels(y, x.shape[0])
    steps = _checks.positive_int(steps, "steps")
    gen = _checks.generator(generator)
    if batch_size is not None:
        batch_size = _checks.positive_int(batch_size, "batch_size")
    # Adam (Kingma and Ba) written out: torch.optim's first step imports torch._dynamo, several CPU seconds that
    # a chapter training a classifier of a few hundred weights cannot afford
    params = [p for p in model.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    beta1, beta2, tiny = 0.9, 0.999, 1e-8
    losses = []
    for k in range(1, steps + 1):
        if batch_size is None or batch_size >= x.shape[0]:
            xb, yb = x, y
        else:
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
            xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(model(xb), yb)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, m_p, v_p in zip(params, grads, m, v, strict=True):
                g = g + weight_decay * p
                m_p.mul_(beta1).add_(g, alpha=1 - beta1)
                v_p.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                step = lr * m_p / (1 - beta1**k) / (torch.sqrt(v_p / (1 - beta2**k)) + tiny)
                p.sub_(step)
        losses.append(float(loss.detach()))
    return losses


def cross_entropy(classifier, x, y) -> torch.Tensor:
    """Per-row cross-entropy loss :math:`\\ell(x, y) = -\\log\\mathrm{softmax}(f(x))_y`, shape (n,).

    Parameters
    ----------
    classifier : callable
        ``classifier(x)`` returning logits (n, C).
    x : torch.Tensor
        Points, shape (n, D).
    y : int or array_like of int
        One label, or one per row.
    """
    x = _checks.points(x, "x")
    y = _checks.labels(y, x.shape[0], device=x.device)
    return F.cross_entropy(_logits(_classifier(classifier), x), y, reduction="none")


def accuracy(labels_pred, y) -> float:
    """Share of rows whose predicted label equals ``y``.

    Parameters
    ----------
    labels_pred : array_like of int
        Predicted labels, shape (n,).
    y : int or array_like of int
        The true label, one for all rows or one per row.
    """
    labels_pred = torch.as_tensor(labels_pred)
    y = _checks.labels(y, labels_pred.shape[0])
    return float((labels_pred.long() == y).double().mean())


# -- attacks -------------------------------------------------------------------------------------------------------
def _attack_inputs(classifier, x, y, radius, norm):
    """The checked arguments every attack takes: classifier, points (detached), labels, radius and norm."""
    classifier = _classifier(classifier)
    x = _checks.points(x, "x").detach()
    y = _checks.labels(y, x.shape[0], device=x.device)
    return classifier, x, y, _radius(radius), _norm(norm)


def _input_gradient(classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(_logits(classifier, x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: sign (L-inf) or the normalised gradient (L2)."""
    if norm == "linf":
        return torch.sign(grad)
    size = grad.norm(dim=1, keepdim=True)
    return torch.where(size > 0, grad / torch.clamp(size, min=torch.finfo(grad.dtype).tiny), torch.zeros_like(grad))


def _project(x_adv: torch.Tensor, x: torch.Tensor, radius: float, norm: str) -> torch.Tensor:
    """Projection of each row of ``x_adv`` onto the ball of the given radius around the row of ``x``."""
    delta = x_adv - x
    if norm == "linf":
        return x + torch.clamp(delta, -radius, radius)
    size = delta.norm(dim=1, keepdim=True)
    factor = torch.where(size > radius, radius / torch.clamp(size, min=torch.finfo(x.dtype).tiny),
                         torch.ones_like(size))
    return x + delta * factor


def fgsm(classifier, x, y, radius: float, *, norm: str = "linf") -> torch.Tensor:
    r"""The fast gradient sign method :cite:p:`goodfellow2015explaining`: one step to the edge of the ball.

    .. math::

        x' = x + \epsilon\,\mathrm{sign}\,\nabla_x\ell(x, y)\quad(L^\infty),\qquad
        x' = x + \epsilon\,\frac{\nabla_x\ell(x, y)}{\|\nabla_x\ell(x, y)\|_2}\quad(L^2),

    with :math:`\ell` the cross-entropy of the classifier's logits.  Deterministic (no generator).  Review Section
    7.2; book chapter *Adversarial robustness and distributionally robust optimization*.

    Parameters
    ----------
    classifier : callable
        ``x -> logits`` of shape (n, C), differentiable in x.
    x : torch.Tensor
        Clean points, shape (n, D).
    y : int or array_like
        Their true labels.
    radius : float
        The attack radius :math:`\epsilon \ge 0`.
    norm : {"linf", "l2"}
        The norm of the ball.

    Returns
    -------
    torch.Tensor
        The attacked points, shape (n, D), detached.
    """
    classifier, x, y, radius, norm = _attack_inputs(classifier, x, y, radius, norm)
    return (x + radius * _direction(_input_gradient(classifier, x, y), norm)).detach()


def pgd(classifier, x, y, radius: float, *, norm: str = "linf", n_steps: int = 20, step_size: float | None = None,
        random_start: bool = True, generator=None) -> torch.Tensor:
    r"""Projected gradient descent on the loss (ascent), the attack of :cite:t:`madry2018towards`.

    .. math::

        x^{0} = x + \delta_0,\quad \delta_0 \sim \mathrm{Unif}(B_\epsilon),\qquad
        x^{k+1} = \Pi_{B_\epsilon(x)}\Big(x^k + \gamma\,d\big(\nabla_x\ell(x^k, y)\big)\Big),

    with :math:`d` the sign of the gradient (:math:`L^\infty`) or the normalised gradient (:math:`L^2`) and
    :math:`\Pi` the projection onto the ball.  The iterate with the largest loss is returned for each row, so PGD
    never does worse than its start.  Review Section 7.2; book chapter *Adversarial robustness and distributionally
    robust optimization*.

    Parameters
    ----------
    classifier, x, y, radius, norm
        As in :func:`fgsm`.
    n_steps : int
        Number of ascent steps.
    step_size : float, optional
        :math:`\gamma`; default :math:`2.5\,\epsilon / n_{\rm steps}` (the usual choice).
    random_start : bool
        Start from a uniform point of the ball (else from x).
    generator : None, int, torch.Generator or numpy Generator
        Source of the random start.

    Returns
    -------
    torch.Tensor
        The attacked points, shape (n, D), detached, each within the ball.
    """
    classifier, x, y, radius, norm = _attack_inputs(classifier, x, y, radius, norm)
    n_steps = _checks.positive_int(n_steps, "n_steps")
    gamma = 2.5 * radius / n_steps if step_size is None else _radius(step_size, "step_size")
    gen = _checks.generator(generator)
    n, D = x.shape
    if random_start and radius > 0:
        if norm == "linf":
            delta = (2 * torch.rand(n, D, generator=gen, dtype=x.dtype) - 1) * radius
        else:  # uniform in the L2 ball: a uniform direction times radius * U^(1/D)
            g = torch.randn(n, D, generator=gen, dtype=x.dtype)
            u = torch.rand(n, 1, generator=gen, dtype=x.dtype)
            delta = g / g.norm(dim=1, keepdim=True) * radius * u ** (1.0 / D)
        x_adv = x + delta
    else:
        x_adv = x.clone()
    best, best_loss = x_adv.clone(), cross_entropy(classifier, x_adv, y).detach()
    for _ in range(n_steps):
        x_adv = _project(x_adv + gamma * _direction(_input_gradient(classifier, x_adv, y), norm), x, radius, norm)
        loss = cross_entropy(classifier, x_adv, y).detach()
        better = loss > best_loss
        best[better], best_loss[better] = x_adv[better], loss[better]
    return best.detach()


# -- purification --------------------------------------------------------------------------------------------------
def purify(x, score, t_star: float, *, sde=None, n_steps: int = 50, t0: float | None = None, sampler=ddpm,
           spacing: str = "logsnr", final_denoise: bool = True, generator=None) -> torch.Tensor:
    r"""Diffusion purification (DiffPure, :cite:t:`nie2022diffusion`): diffuse each row to :math:`t^*`, run back.

    .. math::

        x_{t^*} = \alpha(t^*)\,x + \sqrt{h(t^*)}\,\varepsilon, \qquad
        \mathrm{pur}(x) = \text{backward process driven by } s \text{ from } x_{t^*} \text{ at } t^*
        \text{ down to } t_0,

    with a sampler of :mod:`diffnotes.samplers` on ``time_grid(sde, t0, n_steps, spacing, T=t_star)`` and, with
    ``final_denoise``, Tweedie's denoised estimate at :math:`t_0` as the output.  With the exact score and a fine
    grid the result is a draw from the posterior :math:`p(x_0 \mid x_{t^*})` of the data law (the backward process
    started from the forward marginal has the forward marginals); as :math:`t^* \to 0` it returns the input.
    Review Section 7.2; book chapter *Adversarial robustness and distributionally robust optimization*.

    Parameters
    ----------
    x : torch.Tensor
        Points to purify, shape (n, D).
    score : callable or object with ``.score``
        The score ``score(x, t)`` of the clean data law (exact or learned).
    t_star : float
        The diffusion time :math:`t^*`, in (0, T].
    sde : VPSDE, optional
        The forward process; default: the ``sde`` of the score's provider (a target, an estimator), else
        :class:`~diffnotes.sde.ConstantVP`.
    n_steps : int
        Steps of the backward sampler from :math:`t^*` to :math:`t_0`.
    t0 : float, optional
        Early-stopping time, :math:`0 < t_0 < t^*`; default :math:`\min(10^{-3}, t^*/10)`.
    sampler : callable
        A sampler with the package's signature (default :func:`~diffnotes.samplers.ddpm`).
    spacing : str
        Spacing of the time grid (see :func:`~diffnotes.samplers.time_grid`).
    final_denoise : bool
        End with Tweedie's estimate :math:`\hat x_0` at :math:`t_0` (default) instead of the state at :math:`t_0`.
    generator : None, int, torch.Generator or numpy Generator
        Source of the forward noise and of the sampler's noise.

    Returns
    -------
    torch.Tensor
        The purified points, shape (n, D).
    """
    x = _checks.points(x, "x").detach()
    score = _checks.score_callable(score)
    if sde is None:  # a target or an estimator carries its forward process: use it
        sde = getattr(score, "__self__", score)
        sde = getattr(sde, "sde", None)
    sde = _checks.sde_or_default(sde)
    t_star = float(sde.check_time(t_star, name="t_star"))
    n_steps = _checks.positive_int(n_steps, "n_steps")
    t0 = min(1e-3, t_star / 10) if t0 is None else float(t0)
    if not 0 < t0 < t_star:
        raise ValueError(f"t0 must satisfy 0 < t0 < t_star = {t_star:g}, got {t0:g}")
    gen = _checks.generator(generator)
    x_t, _ = sde.perturb(x, t_star, generator=gen)
    grid = time_grid(sde, t0, n_steps, spacing=spacing, T=t_star)
    return sampler(score, x_t, grid, sde=sde, generator=gen, final_denoise=final_denoise)


def majority_vote(votes, n_classes: int | None = None) -> torch.Tensor:
    r"""The label most often given in each column of a (K, n) table of labels (ties: the smallest label).

    DensePure's aggregation :cite:p:`xiao2023densepure`: :math:`\hat y = \arg\max_c \#\{k : y_k = c\}`.

    Parameters
    ----------
    votes : array_like of int, shape (K, n)
        Label of run k for point i.
    n_classes : int, optional
        Number of classes (default: the largest label + 1).
    """
    votes = torch.as_tensor(votes)
    if votes.is_floating_point() or votes.dtype == torch.bool:
        raise TypeError(f"votes must be integer labels, got dtype {votes.dtype}")
    if votes.ndim != 2 or votes.shape[0] < 1:
        raise ValueError(f"votes must have shape (K, n) with K >= 1, got {tuple(votes.shape)}")
    votes = votes.long()
    if votes.numel() and votes.min() < 0:
        raise ValueError("labels must be non-negative")
    C = int(votes.max()) + 1 if n_classes is None else _checks.positive_int(n_classes, "n_classes")
    if votes.numel() and votes.max() >= C:
        raise ValueError(f"a label is >= n_classes = {C}")
    counts = torch.zeros(C, votes.shape[1], dtype=torch.long).scatter_add_(0, votes, torch.ones_like(votes))
    return counts.argmax(0)  # argmax returns the first maximal index: ties go to the smallest label


def purified_predict(classifier, x, score, t_star: float, K: int = 15, *, sde=None, n_steps: int = 50,
                     t0: float | None = None, sampler=ddpm, spacing: str = "logsnr", return_votes: bool = False,
                     generator=None):
    r"""Classify after purification, with a majority vote over K independent purifications (DensePure).

    .. math::

        \hat y(x) = \arg\max_c\ \#\{k \le K : \arg\max f(\mathrm{pur}_k(x)) = c\},

    :func:`purify` run K times with independent noise on K copies of every row (one batch), the classifier's labels
    of the purified points, and :func:`majority_vote`.  K = 1 is DiffPure :cite:p:`nie2022diffusion`, K > 1 is
    DensePure :cite:p:`xiao2023densepure`.  Review Section 7.2; book chapter *Adversarial robustness and
    distributionally robust optimization*.

    Parameters
    ----------
    classifier : callable
        ``x -> logits`` (n, C).
    x : torch.Tensor
        Points, shape (n, D).
    score : callable or object with ``.score``
        Score of the clean data law.
    t_star : float
        Diffusion time, in (0, T].
    K : int
        Number of purifications per point, at least 1.
    sde, n_steps, t0, sampler, spacing
        As for :func:`purify`.
    return_votes : bool
        Also return the (K, n) table of labels.
    generator : None, int, torch.Generator or numpy Generator
        Source of the noise.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        The voted labels, shape (n,), and with ``return_votes`` the votes, shape (K, n).
    """
    classifier = _classifier(classifier)
    x = _checks.points(x, "x").detach()
    K = _checks.positive_int(K, "K")
    n = x.shape[0]
    pure = purify(x.repeat(K, 1), score, t_star, sde=sde, n_steps=n_steps, t0=t0, sampler=sampler, spacing=spacing,
                  generator=generator)
    with torch.no_grad():
        logits = _logits(classifier, pure)
    votes = logits.argmax(1).reshape(K, n)
    labels = majority_vote(votes, logits.shape[1])
    return (labels, votes) if return_votes else labels
