r"""Exact targets: data laws whose diffused densities and scores are known in closed form.

For a Gaussian mixture :math:`P_{\rm data} = \sum_k \pi_k \mathsf N(\mu_k, \Sigma_k)` the forward process keeps the
mixture form (review Section 2.1; inventory "common ground truths"):

.. math::

    p_t(x) = \sum_k \pi_k\,\mathsf N\big(x;\ \alpha(t)\mu_k,\ \alpha(t)^2\Sigma_k + h(t) I\big),\qquad
    \nabla\log p_t(x) = \sum_k w_k(x, t)\,\big(\alpha^2\Sigma_k + hI\big)^{-1}\big(\alpha\mu_k - x\big),

where :math:`w_k(x, t) \propto \pi_k\,\mathsf N(x;\alpha\mu_k, \alpha^2\Sigma_k + hI)` is the posterior probability of
component :math:`k` -- also the exact noise-aware classifier :math:`c_t(k\mid x)`.  A class may gather several
components (``labels``); the class-conditional score is then the score of the mixture restricted to that class.

Each covariance is diagonalised once, :math:`\Sigma_k = U_k\,\mathrm{diag}(\lambda_k)\,U_k^\top`, so that
:math:`\alpha^2\Sigma_k + hI = U_k\,\mathrm{diag}(\alpha^2\lambda_k + h)\,U_k^\top` at every time without a new
factorisation.  Everything is float64 and the mixture sums use log-sum-exp.

These are the ground truths that separate learning error from discretisation error (book chapters *Forward and
backward processes* and *Samplers*).  Every object provides the package's one protocol, ``score(x, t)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _checks
from .sde import VPSDE

__all__ = ["GaussianMixture", "Gaussian", "SubspaceMixture", "ring_mixture", "orthonormal_basis"]

_LOG_2PI = math.log(2 * math.pi)


def _tensor(name, value, ndim=None) -> torch.Tensor:
    try:
        out = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers, got {value!r}") from err
    if ndim is not None and out.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(out.shape)}")
    if not torch.all(torch.isfinite(out)):
        raise ValueError(f"{name} must be finite")
    return out


class GaussianMixture:
    r"""A Gaussian mixture in :math:`\mathbb R^D` with its exact diffused law under a VP forward process.

    Parameters
    ----------
    weights : array of shape (K,)
        Mixture weights :math:`\pi_k`: non-negative, summing to 1.
    means : array of shape (K, D)
        Component means :math:`\mu_k`.
    covs : array of shape (K, D, D), (K, D) or (K,)
        Component covariances: full, diagonal, or isotropic variances.  Each must be symmetric positive definite.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`, the review's :math:`g \equiv 1`).
    labels : array of K ints, optional
        The class of each component (default: component k is class k).  Classes are 0..C-1, each non-empty.
    """

    _allow_singular = False

    def __init__(self, weights, means, covs, sde: VPSDE | None = None, labels=None):
        weights = _tensor("weights", weights, 1)
        means = _tensor("means", means, 2)
        K, D = means.shape
        if weights.shape[0] != K:
            raise ValueError(f"weights has {weights.shape[0]} entries but means has {K} rows (components)")
        if torch.any(weights < 0):
            raise ValueError(f"mixture weights must be non-negative, got {weights.tolist()}")
        if abs(float(weights.sum()) - 1) > 1e-8:
            raise ValueError(f"mixture weights must sum to 1, they sum to {float(weights.sum()):.10g}")
        covs = _tensor("covs", covs)
        if covs.shape == (K,):
            covs = covs[:, None, None] * torch.eye(D, dtype=torch.float64)
        elif covs.shape == (K, D):
            covs = torch.diag_embed(covs)
        elif covs.shape != (K, D, D):
            raise ValueError(f"covs must have shape ({K}, {D}, {D}), ({K}, {D}) or ({K},); got {tuple(covs.shape)}")
        if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10 * (1 + covs.abs().max())):
            raise ValueError("every covariance must be symmetric")
        evals, evecs = torch.linalg.eigh(covs)
        scale = torch.clamp(evals.abs().amax(dim=1, keepdim=True), min=1.0)
        if self._allow_singular:
            if torch.any(evals < -1e-10 * scale):
                raise ValueError("every covariance must be positive semi-definite")
            evals = torch.clamp(evals, min=0.0)
        elif torch.any(evals <= 1e-12 * scale):
            bad = int(torch.nonzero(torch.any(evals <= 1e-12 * scale, dim=1))[0])
            raise ValueError(
                f"covariance of component {bad} is not positive definite (smallest eigenvalue "
                f"{float(evals[bad].min()):.3g}); for data on a subspace use SubspaceMixture"
            )
        if labels is None:
            labels = torch.arange(K)
        else:
            labels = torch.as_tensor(np.asarray(labels)).long()
            if labels.shape != (K,):
                raise ValueError(f"labels must have one entry per component ({K}), got shape {tuple(labels.shape)}")
            if labels.min() < 0 or set(labels.tolist()) != set(range(int(labels.max()) + 1)):
                raise ValueError("labels must be the integers 0..C-1, each used by at least one component")
        self.weights, self.means, self.covs = weights, means, covs
        self._evals, self._evecs = evals, evecs
        self.labels = labels
        self.sde = _checks.sde_or_default(sde)

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """The dimension D."""
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        """The number of components K."""
        return self.means.shape[0]

    @property
    def n_classes(self) -> int:
        """The number of classes C."""
        return int(self.labels.max()) + 1

    # -- the diffused law ------------------------------------------------------------------------------
    def _check_x(self, x) -> torch.Tensor:
        return _checks.points(x, "x", self.dim)

    def _log_joint(self, x, a, h):
        """log pi_k + log N(x; a mu_k, a^2 Sigma_k + h I) for every row and component, and the whitened residuals."""
        y = x[:, None, :] - a[:, :, None] * self.means.to(x)[None]  # (n, K, D)
        z = torch.einsum("nkd,kde->nke", y, self._evecs.to(x))  # coordinates in each eigenbasis
        var = a[:, :, None] ** 2 * self._evals.to(x)[None] + h[:, :, None]  # (n, K, D)
        quad = (z**2 / var).sum(-1)
        logdet = torch.log(var).sum(-1)
        log_w = torch.log(self.weights.to(x))  # -inf for a zero weight: harmless under log-sum-exp
        return log_w[None] - 0.5 * (quad + logdet + self.dim * _LOG_2PI), z, var

    def _coefficients(self, x, t):
        return self.sde.coefficients(t, x)

    def log_prob(self, x, t) -> torch.Tensor:
        r"""Exact log-density :math:`\log p_t(x)` of the diffused law, shape (n,).  t in (0, T].

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D): a floating tensor (float64 for exact values; the computation runs in the dtype
            and on the device of ``x``).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (n,) or (n, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            :math:`\log p_t` at each row, shape (n,).
        """
        x = self._check_x(x)
        lj, _, _ = self._log_joint(x, *self._coefficients(x, t))
        return torch.logsumexp(lj, dim=1)

    def data_log_prob(self, x) -> torch.Tensor:
        r"""Log-density of the data law itself (t = 0), shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D): a floating tensor (float64 for exact values; the computation runs in the dtype
            and on the device of ``x``).

        Returns
        -------
        torch.Tensor
            :math:`\log p_{\rm data}` at each row, shape (n,).
        """
        x = self._check_x(x)
        one = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        lj, _, _ = self._log_joint(x, one, 0 * one)
        return torch.logsumexp(lj, dim=1)

    def cdf(self, x, t=0.0) -> torch.Tensor:
        r"""Cumulative distribution function of :math:`P_t` (t in [0, T]) for one-dimensional mixtures.

        Parameters
        ----------
        x : float, array_like or torch.Tensor
            The points, of any shape (each entry is one point of the line); an array is converted to float64.
        t : float
            One time in [0, T] (default 0: the data law).

        Returns
        -------
        torch.Tensor
            :math:`P_t((-\infty, x])` at each entry, shaped like ``x``.

        Raises
        ------
        ValueError
            If the mixture is not one-dimensional, or t is not one time in [0, T].
        """
        if self.dim != 1:
            raise ValueError(f"cdf() is defined for one-dimensional mixtures, this one has D = {self.dim}")
        law = self.diffused(t)
        x = torch.as_tensor(np.asarray(x, dtype=np.float64)) if not isinstance(x, torch.Tensor) else x
        sd = torch.sqrt(law.covs[:, 0, 0])
        return (law.weights * torch.special.ndtr((x.reshape(-1, 1) - law.means[:, 0]) / sd)).sum(-1).reshape(x.shape)

    def component_scores(self, x, t) -> torch.Tensor:
        r"""The score of each diffused component, :math:`(\alpha^2\Sigma_k+hI)^{-1}(\alpha\mu_k - x)`: (n, K, D).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D): a floating tensor (float64 for exact values; the computation runs in the dtype
            and on the device of ``x``).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (n,) or (n, 1)), in (0, T].
        """
        x = self._check_x(x)
        _, z, var = self._log_joint(x, *self._coefficients(x, t))
        return -torch.einsum("nke,kde->nkd", z / var, self._evecs.to(x))

    def posterior(self, x, t) -> torch.Tensor:
        r"""Posterior probabilities :math:`w_k(x, t)` of the components given :math:`X_t = x`: (n, K).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D): a floating tensor (float64 for exact values; the computation runs in the dtype
            and on the device of ``x``).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (n,) or (n, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            Shape (n, K); each row sums to 1.
        """
        x = self._check_x(x)
        lj, _, _ = self._log_joint(x, *self._coefficients(x, t))
        return torch.softmax(lj, dim=1)

    def score(self, x, t) -> torch.Tensor:
        r"""Exact score :math:`\nabla_x \log p_t(x)`, shape (n, D).  t in (0, T]: a float or one time per row.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D): a floating tensor (float64 for exact values; the computation runs in the dtype
            and on the device of ``x``).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (n,) or (n, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            The score at each row, shaped like ``x``.
        """
        return self._restricted_score(x, t, None)

    def _restricted_score(self, x, t, mask):
        x = self._check_x(x)
        lj, z, var = self._log_joint(x, *self._coefficients(x, t))
        if mask is not None:
            lj = lj.masked_fill(~mask, -math.inf)
        w = torch.softmax(lj, dim=1)
        return -torch.einsum("nk,nke,kde->nd", w, z / var, self._evecs.to(x))

    # -- classes -------------------------------------------------------------------------------------
    def _check_y(self, y, n, device=None) -> torch.Tensor:
        y = torch.as_tensor(y, device=device)
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"class labels must be integers, got dtype {y.dtype}")
        y = y.long()
        if y.ndim == 0:
            y = y.expand(n)
        if y.shape != (n,):
            raise ValueError(f"y must be one class id or one per row ({n}), got shape {tuple(y.shape)}")
        if torch.any((y < 0) | (y >= self.n_classes)):
            raise ValueError(f"class ids must lie in 0..{self.n_classes - 1}, got {sorted(set(y.tolist()))}")
        return y

    def class_log_posterior(self, x, t) -> torch.Tensor:
        r"""Exact noise-aware classifier :math:`\log c_t(y \mid x)` for every class: (n, C).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D): a floating tensor (float64 for exact values; the computation runs in the dtype
            and on the device of ``x``).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (n,) or (n, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            :math:`\log c_t(y \mid x)` for the classes y = 0..C-1 (columns) at each row, shape (n, C).
        """
        x = self._check_x(x)
        lj, _, _ = self._log_joint(x, *self._coefficients(x, t))
        onehot = torch.nn.functional.one_hot(self.labels, self.n_classes).bool().to(x.device)  # (K, C)
        per_class = torch.logsumexp(lj[:, :, None].masked_fill(~onehot[None], -math.inf), dim=1)
        return per_class - torch.logsumexp(lj, dim=1, keepdim=True)

    def class_posterior(self, x, t) -> torch.Tensor:
        r"""Exact class posterior :math:`c_t(y \mid x)`: (n, C).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D): a floating tensor (float64 for exact values; the computation runs in the dtype
            and on the device of ``x``).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (n,) or (n, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            Shape (n, C); each row sums to 1.
        """
        return torch.exp(self.class_log_posterior(x, t))

    def conditional_score(self, x, y, t) -> torch.Tensor:
        r"""Exact class-conditional score :math:`\nabla_x\log p_t(x\mid y)`, y one id or one per row: (n, D).

        The score of the mixture restricted to the components of class y (see ``labels``).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D): a floating tensor (float64 for exact values; the computation runs in the dtype
            and on the device of ``x``).
        y : int or integer tensor
            One class id in 0..C-1 for all rows, or one per row (shape (n,)).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (n,) or (n, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            The conditional score at each row, shaped like ``x``.

        Raises
        ------
        TypeError
            If y is not of an integer type.
        ValueError
            If y has the wrong shape or an id outside 0..C-1.
        """
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0], x.device)
        mask = self.labels.to(x.device)[None, :] == y[:, None]
        return self._restricted_score(x, t, mask)

    def class_weights(self) -> torch.Tensor:
        """Prior probability of each class, shape (C,)."""
        return torch.zeros(self.n_classes, dtype=torch.float64).index_add_(0, self.labels, self.weights)

    # -- sampling ------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, y=None, return_labels: bool = False):
        """Draw n points from the data law (from the class ``y`` if given).

        Returns the points (n, D), and with ``return_labels`` also their component ids (n,).

        Parameters
        ----------
        n : int
            The number of points, at least 1.
        generator : None, int, torch.Generator or numpy.random.Generator, optional
            Source of the draws (an int is a seed; None: fresh entropy, not reproducible).
        y : int, optional
            Draw from this class (0..C-1) only: from its components, with weights renormalised within the class.
            Default None: the whole mixture.
        return_labels : bool
            Also return the component of each point (default False).

        Returns
        -------
        torch.Tensor or (torch.Tensor, torch.Tensor)
            The points, float64 of shape (n, D); with ``return_labels`` also their component ids 0..K-1 (long,
            shape (n,): components, not classes; the class of a point is ``labels[k]``).
        """
        generator = _checks.generator(generator)
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n}")
        n = int(n)
        w = self.weights
        if y is not None:
            y = self._check_y(y, 1)[0]
            w = torch.where(self.labels == y, w, torch.zeros_like(w))
            w = w / w.sum()
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        xi = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        root = self._evecs * torch.sqrt(self._evals)[:, None, :]  # U diag(sqrt(lambda))
        x = self.means[k] + torch.einsum("nde,ne->nd", root[k], xi)
        return (x, k) if return_labels else x

    def sample_marginal(self, n: int, t, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Draw n points from the diffused law :math:`P_t` (data, then the forward kernel).

        Parameters
        ----------
        n : int
            The number of points, at least 1.
        t : float or torch.Tensor
            One time for all points, or one per point (shape (n,)), in (0, T].
        generator : None, int, torch.Generator or numpy.random.Generator, optional
            Source of both the data draws and the forward noise (an int is a seed; None: fresh entropy).

        Returns
        -------
        torch.Tensor
            The points :math:`x_t`, float64 of shape (n, D).
        """
        generator = _checks.generator(generator)
        x0 = self.sample(n, generator)
        return self.sde.marginal_sample(x0, t, generator)[0]

    # -- moments and the diffused law as an object -----------------------------------------------------
    def mean(self) -> torch.Tensor:
        """Mean of the data law, shape (D,)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Covariance of the data law, shape (D, D)."""
        m = self.mean()
        d = self.means - m
        return torch.einsum("k,kij->ij", self.weights, self.covs + d[:, :, None] * d[:, None, :])

    def diffused(self, t) -> GaussianMixture:
        r"""The law :math:`P_t` as a mixture (weights, means :math:`\alpha\mu_k`, covs :math:`\alpha^2\Sigma_k+hI`).

        Parameters
        ----------
        t : float or torch.Tensor
            One time in [0, T]; at t = 0 the mixture itself is returned.

        Returns
        -------
        GaussianMixture
            The diffused law, with the same forward process and class labels; for t > 0 a plain
            :class:`GaussianMixture` whatever the class of the original.

        Raises
        ------
        ValueError
            If t is not one time in [0, T].
        """
        t = self.sde.check_time(t, allow_zero=True)
        if t.ndim != 0:
            raise ValueError("diffused() takes one time")
        if float(t) == 0:
            return self
        a, h = float(self.sde.alpha(t)), float(self.sde.h(t))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + h * eye, self.sde, self.labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.n_components}, D={self.dim}, classes={self.n_classes}, sde={self.sde})"


class Gaussian(GaussianMixture):
    r"""A Gaussian :math:`\mathsf N(\mu, \Sigma)`: :math:`P_t = \mathsf N(\alpha\mu, \alpha^2\Sigma + hI)`.

    Its score :math:`-(\alpha^2\Sigma + hI)^{-1}(x - \alpha\mu)` is affine in x, so every sampler driven by it is an
    affine map of its Gaussian inputs: the output law is Gaussian and known exactly (:mod:`diffnotes.oracle`).

    Parameters
    ----------
    mean : array of shape (D,)
        The mean :math:`\mu`.
    cov : float, array of shape (D,) or (D, D)
        The covariance :math:`\Sigma`: an isotropic variance (:math:`\Sigma = \sigma^2 I`), a diagonal, or a full
        symmetric positive definite matrix.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    """

    def __init__(self, mean, cov, sde: VPSDE | None = None):
        mean = _tensor("mean", mean, 1)
        cov = _tensor("cov", cov)
        D = mean.shape[0]
        if cov.ndim == 0:
            cov = cov * torch.eye(D, dtype=torch.float64)
        elif cov.ndim == 1:
            if cov.shape[0] != D:
                raise ValueError(f"a diagonal cov needs {D} entries, got {cov.shape[0]}")
            cov = torch.diag(cov)
        elif cov.shape != (D, D):
            raise ValueError(f"cov must be a number, a ({D},) diagonal or a ({D}, {D}) matrix; got {tuple(cov.shape)}")
        super().__init__([1.0], mean[None], cov[None], sde)

    def moments(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean :math:`\alpha\mu` and covariance :math:`\alpha^2\Sigma + hI` of :math:`P_t` (t in [0, T]).

        Parameters
        ----------
        t : float or torch.Tensor
            One time in [0, T] (t = 0: the data law's :math:`\mu` and :math:`\Sigma`).

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            The mean, shape (D,), and the covariance, shape (D, D), float64.
        """
        t = self.sde.check_time(t, allow_zero=True)
        a, h = float(self.sde.alpha(t)), float(self.sde.h(t))
        return a * self.means[0], a**2 * self.covs[0] + h * torch.eye(self.dim, dtype=torch.float64)


class SubspaceMixture(GaussianMixture):
    r"""Data on a linear subspace, :math:`x = Az` with :math:`A \in \mathbb R^{D\times d}` orthonormal and a Gaussian
    mixture latent :math:`z \in \mathbb R^d` (review Section 4.1, *Score blow-up*; :cite:p:`chen2023score`).

    The ambient law is the degenerate mixture with means :math:`A\mu_k` and covariances :math:`A\Sigma_kA^\top`; for
    t > 0 its score is exact and splits into the on-subspace and the orthogonal parts,

    .. math::

        \nabla\log p_t(x) = A\,\nabla\log p^{\rm ld}_t(A^\top x) - \frac{1}{h(t)}\,(I - AA^\top)\,x,

    where :math:`p^{\rm ld}_t` is the latent law diffused by the same forward process (the attribute ``latent``).

    Parameters
    ----------
    A : array of shape (D, d)
        The basis of the subspace: orthonormal columns (:math:`A^\top A = I`), d <= D; see
        :func:`orthonormal_basis`.
    weights : array of shape (K,)
        Mixture weights of the latent law, non-negative, summing to 1.
    means : array of shape (K, d)
        Component means :math:`\mu_k` in the latent coordinates.
    covs : array of shape (K, d, d), (K, d) or (K,)
        Latent component covariances :math:`\Sigma_k` (full, diagonal or isotropic), symmetric positive definite.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    labels : array of K ints, optional
        The class of each component (default: component k is class k), as in :class:`GaussianMixture`.
    """

    _allow_singular = True

    def __init__(self, A, weights, means, covs, sde: VPSDE | None = None, labels=None):
        A = _tensor("A", A, 2)
        D, d = A.shape
        if d > D:
            raise ValueError(f"the subspace dimension d = {d} cannot exceed the ambient dimension D = {D}")
        if not torch.allclose(A.T @ A, torch.eye(d, dtype=torch.float64), atol=1e-8):
            raise ValueError("A must have orthonormal columns (A^T A = I); see orthonormal_basis()")
        self.A = A
        self.latent = GaussianMixture(weights, means, covs, sde, labels)
        lat = self.latent
        super().__init__(lat.weights, lat.means @ A.T, A @ lat.covs @ A.T, lat.sde, lat.labels)

    def project(self, x) -> torch.Tensor:
        r"""Latent coordinates :math:`A^\top x`, shape (n, d).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D), floating.
        """
        return self._check_x(x) @ self.A.to(x)

    def orthogonal(self, x) -> torch.Tensor:
        r"""The component :math:`(I - AA^\top)x` of x orthogonal to the subspace, shape (n, D).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D), floating.
        """
        x = self._check_x(x)
        A = self.A.to(x)
        return x - (x @ A) @ A.T

    def score_decomposition(self, x, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The two terms :math:`A\nabla\log p^{\rm ld}_t(A^\top x)` and :math:`-(I - AA^\top)x / h(t)`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D): a floating tensor (float64 for exact values; the computation runs in the dtype
            and on the device of ``x``).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (n,) or (n, 1)), in (0, T].

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            The on-subspace and the orthogonal terms, each shaped like ``x``; their sum is ``score(x, t)``.
        """
        x = self._check_x(x)
        on = self.latent.score(self.project(x), t) @ self.A.to(x).T
        _, h = self._coefficients(x, t)
        return on, -self.orthogonal(x) / h


def ring_mixture(n_components: int = 8, radius: float = 4.0, std: float = 0.3, sde: VPSDE | None = None):
    r"""K isotropic Gaussians of standard deviation ``std`` evenly spaced on a circle (the "8 Gaussians" benchmark).

    Parameters
    ----------
    n_components : int
        The number K of components, at least 1 (default 8).
    radius : float
        Radius of the circle, >= 0 (default 4): component k has mean
        :math:`r(\cos(2\pi k/K), \sin(2\pi k/K))`.
    std : float
        Standard deviation of every component, > 0 (default 0.3).
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).

    Returns
    -------
    GaussianMixture
        The mixture in dimension 2, with equal weights 1/K (component k is class k).

    Raises
    ------
    ValueError
        If n_components is not a positive integer, radius < 0 or std <= 0.
    """
    if int(n_components) != n_components or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components}")
    if not radius >= 0 or not std > 0:
        raise ValueError(f"need radius >= 0 and std > 0, got radius={radius}, std={std}")
    angles = 2 * np.pi * np.arange(n_components) / n_components
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture(np.full(n_components, 1 / n_components), means, np.full(n_components, std**2), sde)


def orthonormal_basis(D: int, d: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random D x d matrix with orthonormal columns (QR of a Gaussian matrix), float64.

    The signs of the columns are fixed so that the QR factor R has a positive diagonal: the matrix is then
    uniformly (Haar) distributed over the D x d matrices with orthonormal columns.

    Parameters
    ----------
    D : int
        The ambient dimension (rows).
    d : int
        The subspace dimension (columns), 1 <= d <= D.
    generator : None, int, torch.Generator or numpy.random.Generator, optional
        Source of the Gaussian matrix (an int is a seed; None: fresh entropy, not reproducible).

    Returns
    -------
    torch.Tensor
        The basis, float64 of shape (D, d).

    Raises
    ------
    ValueError
        If D or d is not a positive integer, or d > D.
    """
    generator = _checks.generator(generator)
    if int(d) != d or int(D) != D or d < 1:
        raise ValueError(f"D and d must be positive integers, got D={D}, d={d}")
    if d > D:
        raise ValueError(f"the subspace dimension d = {d} cannot exceed the ambient dimension D = {D}")
    q, r = torch.linalg.qr(torch.randn(int(D), int(d), generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]
