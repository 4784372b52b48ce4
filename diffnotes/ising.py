r"""Score estimation in graphical models: the Ising score by message passing, and the ResNet that unrolls it.

Review Section 4.2 (*Score estimation in graphical models*); book chapter *Graphical models*.  Primary reference
:cite:p:`mei2023deep`.

**Convention.**  The data law is the review's :math:`p(\sigma) \propto \exp\{\langle\sigma, A\sigma\rangle\}` on
:math:`\{-1, +1\}^D` with A symmetric (no factor 1/2).  The diagonal of A only adds the constant
:math:`\sum_i A_{ii}` and is dropped; the **couplings** are :math:`J = 2(A - \mathrm{diag}A)`, so that
:math:`p(\sigma) \propto \exp\{\tfrac12\sigma^\top J\sigma\}` and the conditional law of one spin is
:math:`\mathbb P(\sigma_i = \pm1 \mid \sigma_{-i}) \propto e^{\pm (J\sigma)_i}`.  The review's display
:math:`m^{\ell+1} = \tanh((A - K)m^\ell + c_tx_t)` is written for the 1/2-convention; in ours its matrix is J.

**Posterior mean and score.**  Under the forward process :math:`X_t = \alpha\sigma + \sqrt h\,g`, since
:math:`\|\sigma\|^2 = D` is constant,

.. math::

    \mathbb P(\sigma \mid X_t = x) \propto p(\sigma)\,e^{-\|x - \alpha\sigma\|^2/2h} \propto
    \exp\{\tfrac12\sigma^\top J\sigma + c_t\langle\sigma, x\rangle\},\qquad c_t = \frac{\alpha(t)}{h(t)},

an Ising model in the external field :math:`y = c_t x`; Tweedie's formula gives the score
:math:`\nabla\log p_t(x) = (\alpha\,m(x) - x)/h` with :math:`m(x) = \mathbb E[\sigma \mid X_t = x]`.  For
:math:`D \le 16` the posterior mean is computed exactly by enumerating the :math:`2^D` configurations
(:meth:`IsingModel.denoiser`, :meth:`IsingModel.exact_score`).

**Message passing** (:meth:`IsingModel.message_passing`), from :math:`m^0 = 0`:

.. math:: m^{\ell+1} = \tanh\big((J - K)\,m^\ell + c_t x\big),

* ``"naive"``: K = 0, naive mean field (variational inference with a product law);
* ``"tap"``: the Onsager reaction term of the TAP free energy,
  :math:`K(m) = \mathrm{diag}\big(\sum_j J_{ij}^2(1 - m_j^2)\big)` evaluated at the current iterate; its fixed
  points are the TAP equations :math:`m_i = \tanh\big((Jm)_i + y_i - m_i\sum_j J_{ij}^2(1 - m_j^2)\big)`;
* ``"tap_linear"``: the same correction frozen at m = 0, :math:`K = \mathrm{diag}(\sum_j J_{ij}^2)`, a fixed
  matrix as in the review's display, so that each iteration is one residual block.

At high temperature (:math:`\|J\|_{op} < 1`, the review's :math:`\|A\|_{op} < 1/2`) the naive map is a contraction,
so the iterates converge geometrically to the fixed point; what is left is the bias of the approximation, of order
:math:`\|J\|^2` for naive mean field and smaller for TAP.

**The network** (:class:`MessagePassingResNet`).  One residual block per iteration,
:math:`u^{\ell+1} = u^\ell + W_1\phi(W_2u^\ell + b)` on the state :math:`u = (m, y) \in \mathbb R^{2D}`, with
hidden width 3D: D units with :math:`\phi = \tanh` and 2D ReLU units, which carry :math:`-m = \mathrm{ReLU}(-m) -
\mathrm{ReLU}(m)` exactly.  With :math:`W_2 = \begin{pmatrix} J - K & I\\ I & 0\\ -I & 0\end{pmatrix}` and
:math:`W_1 = \begin{pmatrix} I & -I & I\\ 0 & 0 & 0\end{pmatrix}` a block maps :math:`(m, y)` to
:math:`(\tanh((J-K)m + y), y)`: the network of L blocks *is* the iteration with a fixed K, with
:math:`12D^2 + 3D` parameters per block, :math:`O(D^2L)` in all.  (The construction in :cite:p:`mei2023deep` uses
ReLU units throughout and approximates the one-dimensional tanh; using tanh units makes the emulation exact.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from . import _checks
from .sde import VPSDE, as_time
from .spins import MAX_ENUMERATION, SpinModel, tap_mean_field

__all__ = ["IsingModel", "MessagePassingResNet", "CORRECTIONS", "MAX_SPINS", "random_couplings"]

#: The message-passing corrections K of :meth:`IsingModel.message_passing`.
CORRECTIONS = ("naive", "tap", "tap_linear")

#: Largest D for which the 2^D configurations are enumerated.
MAX_SPINS = MAX_ENUMERATION


def _check_A(A) -> torch.Tensor:
    try:
        A = torch.as_tensor(np.asarray(A, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"A must be a square matrix of numbers, got {A!r}") from err
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 1:
        raise ValueError(f"A must be a square (D, D) matrix, got shape {tuple(A.shape)}")
    if not torch.all(torch.isfinite(A)):
        raise ValueError("A must be finite")
    if not torch.allclose(A, A.T, atol=1e-12 * (1 + float(A.abs().max())), rtol=0):
        asym = float((A - A.T).abs().max())
        raise ValueError(
            f"A must be symmetric (the law exp<sigma, A sigma> only sees (A + A^T)/2; pass that), but max|A - A^T| = "
            f"{asym:.3g}"
        )
    return A


def _check_mp(n_iter, correction) -> int:
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if isinstance(n_iter, bool) or int(n_iter) != n_iter or n_iter < 0:
        raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}")
    return int(n_iter)


def random_couplings(D: int, op_norm: float, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A random symmetric matrix A (D, D) with zero diagonal, Gaussian entries, rescaled so that
    :math:`\|A\|_{op}` equals ``op_norm`` (the review's high-temperature regime is :math:`\|A\|_{op} < 1/4`).

    Parameters
    ----------
    D : int
        Number of spins, an integer >= 2.
    op_norm : float
        The operator norm of the result, finite and >= 0.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the Gaussian entries.

    Returns
    -------
    torch.Tensor
        A, float64, shape (D, D).
    """
    generator = _checks.generator(generator)
    if isinstance(D, bool) or int(D) != D or D < 2:
        raise ValueError(f"D must be an integer >= 2, got {D!r}")
    op_norm = float(op_norm)
    if not math.isfinite(op_norm) or op_norm < 0:
        raise ValueError(f"op_norm must be a non-negative number, got {op_norm}")
    G = torch.randn(int(D), int(D), generator=generator, dtype=torch.float64)
    A = torch.triu(G, diagonal=1)
    A = A + A.T
    return A * (op_norm / float(torch.linalg.matrix_norm(A, ord=2)))


class IsingModel(SpinModel):
    r"""The Ising model :math:`p(\sigma) \propto \exp\{\langle\sigma, A\sigma\rangle\}` on :math:`\{-1,+1\}^D`.

    Exact computations (probabilities, samples, posterior means) enumerate the :math:`2^D` configurations and need
    D <= 16; message passing works for any D.  It is the :class:`~diffnotes.spins.SpinModel` with :math:`\beta = 1`
    and energy :math:`-\langle\sigma, A\sigma\rangle` (so it also has Glauber dynamics).  See the module docstring
    for the convention (couplings :math:`J = 2(A - \mathrm{diag}A)`).

    Parameters
    ----------
    A : array_like (D, D)
        Symmetric interaction matrix; a non-symmetric A raises ``ValueError``.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    """

    def __init__(self, A, sde: VPSDE | None = None):
        A = _check_A(A)
        super().__init__(A.shape[0], 1.0)
        self.A = A
        self.J = 2 * (A - torch.diag(torch.diagonal(A)))
        self.sde = _checks.sde_or_default(sde)

    @property
    def dim(self) -> int:
        """The number of spins D."""
        return self.N

    # -- the model (enumeration, sampling and tilted means come from SpinModel) ---------------------------------
    def energy(self, sigma) -> torch.Tensor:
        r"""The energy :math:`H(\sigma) = -\langle\sigma, A\sigma\rangle` of each row, shape (n,) (beta = 1).

        Parameters
        ----------
        sigma : torch.Tensor
            Spins, -1 or +1, shape (n, D).
        """
        return -self.log_weight(sigma)

    def log_weight(self, sigma) -> torch.Tensor:
        r"""The unnormalised log-probability :math:`\langle\sigma, A\sigma\rangle` of each row, shape (n,).

        Parameters
        ----------
        sigma : torch.Tensor
            Spins, -1 or +1, shape (n, D).
        """
        sigma = self._check_sigma(sigma)
        return ((sigma @ self.A) * sigma).sum(1)

    def flip_log_odds(self, sigma, i: int) -> torch.Tensor:
        r""":math:`\log p(\sigma_i = +1 \mid \sigma_{-i}) / p(\sigma_i = -1 \mid \sigma_{-i}) = 2(J\sigma)_i`, (n,).

        Parameters
        ----------
        sigma : torch.Tensor
            Spins, -1 or +1, shape (n, D).
        i : int
            The spin, in [0, D).
        """
        return 2 * (self._check_sigma(sigma) @ self.J[:, i])

    def field_scale(self, t) -> torch.Tensor:
        r""":math:`c_t = \alpha(t)/h(t)`, the field per unit of :math:`x_t` in the posterior.

        Parameters
        ----------
        t : float or torch.Tensor
            Time(s) in (0, T].
        """
        t = self.sde.check_time(t)
        return self.sde.alpha(t) / self.sde.h(t)

    def _field(self, x, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self._check_field(x, "x")
        a, h = self.sde.coefficients(t, x)
        return a / h * x, a, h

    # -- exact ----------------------------------------------------------------------------------------------
    def denoiser(self, x, t) -> torch.Tensor:
        r"""Exact posterior mean :math:`\mathbb E[\sigma \mid X_t = x]` by enumeration, (n, D); t in (0, T].

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        y, _, _ = self._field(x, t)
        return self.tilted_mean(y)

    def exact_score(self, x, t) -> torch.Tensor:
        r"""Exact score :math:`\nabla\log p_t(x) = (\alpha\,\mathbb E[\sigma\mid x] - x)/h` (Tweedie), (n, D).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        y, a, h = self._field(x, t)
        return (a * self.tilted_mean(y) - x) / h

    def score(self, x, t) -> torch.Tensor:
        """The exact score ``score(x, t)`` (the package's protocol): the same as :meth:`exact_score`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D), floating.
        t : float or torch.Tensor
            One time or one per row, in (0, T].
        """
        return self.exact_score(x, t)

    def marginal_log_prob(self, x, t) -> torch.Tensor:
        r"""Exact :math:`\log p_t(x) = \log\sum_\sigma p(\sigma)\,\mathsf N(x; \alpha\sigma, hI)`, (n,), by
        enumeration (the brute-force mixture of :math:`2^D` Gaussians).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        x = self._check_field(x, "x")
        a, h = self.sde.coefficients(t, x)
        configs, log_w = self._enumerate()
        log_p = log_w - torch.logsumexp(log_w, 0)
        sq = ((x[:, None, :] - a[:, :, None] * configs[None]) ** 2).sum(-1)  # (n, 2^D)
        return torch.logsumexp(log_p[None] - sq / (2 * h), 1) - 0.5 * self.N * torch.log(2 * math.pi * h[:, 0])

    # -- message passing --------------------------------------------------------------------------------------
    def correction(self, kind: str, m: torch.Tensor | None = None) -> torch.Tensor:
        r"""The diagonal of K for ``kind`` in :data:`CORRECTIONS` ("tap" needs the iterate m (n, D)):
        returns (D,) or (n, D).

        Parameters
        ----------
        kind : {"naive", "tap", "tap_linear"}
            The correction (:data:`CORRECTIONS`).
        m : torch.Tensor, optional
            The current iterate (n, D); needed for ``"tap"`` (``ValueError`` otherwise), ignored by the others.
        """
        if kind == "naive":
            return torch.zeros(self.N, dtype=torch.float64)
        J2 = self.J**2
        if kind == "tap_linear":
            return J2.sum(1)
        if kind == "tap":
            if m is None:
                raise ValueError("the TAP correction depends on the iterate m")
            return (1 - m**2) @ J2
        raise ValueError(f"kind must be one of {CORRECTIONS}, got {kind!r}")

    def message_passing(self, x, t, n_iter: int, correction: str = "tap", *, return_all: bool = False):
        r"""Run :math:`m^{\ell+1} = \tanh((J - K)m^\ell + c_t x)` from :math:`m^0 = 0` for ``n_iter`` iterations.

        Returns :math:`m^L` (n, D), or with ``return_all`` every iterate, shape (n_iter + 1, n, D).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        n_iter : int
            Number of iterations L, an integer >= 0.
        correction : {"naive", "tap", "tap_linear"}
            The correction K (:data:`CORRECTIONS`; default ``"tap"``).
        return_all : bool
            Return every iterate (default False).
        """
        n_iter = _check_mp(n_iter, correction)
        y, _, _ = self._field(x, t)
        m = torch.zeros_like(y)
        out = [m]
        for _ in range(n_iter):
            k = self.correction(correction, m)
            m = torch.tanh(m @ self.J - k * m + y)
            out.append(m)
        return torch.stack(out) if return_all else m

    def message_passing_score(self, n_iter: int, correction: str = "tap") -> Callable:
        r"""The score ``score(x, t) = (alpha m^L - x)/h`` that L message-passing iterations give.

        Parameters
        ----------
        n_iter : int
            Number of iterations L, an integer >= 0.
        correction : {"naive", "tap", "tap_linear"}
            The correction K (:data:`CORRECTIONS`; default ``"tap"``).

        Returns
        -------
        callable
            ``score(x, t)`` for x (n, D) and t in (0, T].
        """
        n_iter = _check_mp(n_iter, correction)

        def score(x, t):
            _, a, h = self._field(x, t)
            return (a * self.message_passing(x, t, n_iter, correction) - x) / h

        return score

    def mean_field(self, y, *, tap: bool = False, max_iter: int = 1000, tol: float = 1e-13) -> torch.Tensor:
        r"""The fixed point of naive mean field (or, with ``tap=True``, of the TAP equations) in the external field
        y (n, D), iterated from 0 until successive iterates differ by at most ``tol`` (at most ``max_iter`` times).

        Parameters
        ----------
        y : torch.Tensor
            External fields, shape (n, D).
        tap : bool
            Include the Onsager (TAP) term (default False).
        max_iter : int
            Most iterations, a positive integer (default 1000).
        tol : float
            Stop when the largest change is at most this, >= 0 (default 1e-13).

        Returns
        -------
        torch.Tensor
            The magnetisations, shape (n, D).
        """
        y = self._check_field(y)
        if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        return tap_mean_field(self.J, y, tap=tap, max_iter=int(max_iter), tol=tol)  # the package's one TAP iteration

    def __repr__(self):
        return f"IsingModel(D={self.N}, ||A||_op={float(torch.linalg.matrix_norm(self.A, ord=2)):.3g})"


class MessagePassingResNet(torch.nn.Module):
    r"""A residual network of L blocks :math:`u \leftarrow u + W_1\phi(W_2u + b)` on :math:`u = (m, y)`, whose output
    is the score :math:`(\alpha\,m^L - x)/h` with :math:`y = c_t x` and :math:`m^0 = 0`.

    Hidden width 3D per block: :math:`\phi = \tanh` on the first D units, ReLU on the other 2D.  Parameters:
    :math:`L(12D^2 + 3D)`.  :meth:`from_model` sets the weights so that the network equals L message-passing
    iterations with a fixed K exactly (module docstring); the weights can also be trained (e.g. by
    :func:`diffnotes.losses.dsm_loss`).

    Parameters
    ----------
    D : int
        Number of spins.
    n_layers : int
        Number of residual blocks L (>= 1).
    sde : VPSDE, optional
        The forward process giving :math:`\alpha, h` (default ConstantVP).
    generator : torch.Generator, optional
        Source of the (small) random initial weights.
    """

    def __init__(self, D: int, n_layers: int, sde: VPSDE | None = None, generator: torch.Generator | None = None):
        super().__init__()
        generator = _checks.generator(generator)
        _checks.sizes(D=D, n_layers=n_layers)
        self.D, self.n_layers = int(D), int(n_layers)
        self.sde = _checks.sde_or_default(sde)
        D = self.D
        scale = 0.1 / math.sqrt(2 * D)
        self.W2 = torch.nn.Parameter(scale * torch.randn(n_layers, 3 * D, 2 * D, generator=generator,
                                                         dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.zeros(n_layers, 3 * D, dtype=torch.float64))
        self.W1 = torch.nn.Parameter(scale * torch.randn(n_layers, 2 * D, 3 * D, generator=generator,
                                                         dtype=torch.float64))

    @classmethod
    def from_model(cls, model: IsingModel, n_layers: int, correction: str = "tap_linear") -> MessagePassingResNet:
        """The network whose blocks are exactly the iterations of ``model.message_passing`` with a fixed K
        (``correction`` "naive" or "tap_linear").

        Parameters
        ----------
        model : IsingModel
            The model whose iteration the network emulates.
        n_layers : int
            Number of residual blocks L, >= 1.
        correction : {"naive", "tap_linear"}
            The fixed correction K (default ``"tap_linear"``).
        """
        if not isinstance(model, IsingModel):
            raise TypeError(f"model must be an IsingModel, got {type(model).__name__}")
        if correction not in ("naive", "tap_linear"):
            raise ValueError(f"a residual block emulates a fixed K: correction must be 'naive' or 'tap_linear', "
                             f"got {correction!r}")
        net = cls(model.N, n_layers, model.sde)
        D = model.N
        eye, zero = torch.eye(D, dtype=torch.float64), torch.zeros(D, D, dtype=torch.float64)
        M = model.J - torch.diag(model.correction(correction))
        W2 = torch.cat([torch.cat([M, eye], 1), torch.cat([eye, zero], 1), torch.cat([-eye, zero], 1)], 0)
        W1 = torch.cat([torch.cat([eye, -eye, eye], 1), torch.cat([zero, zero, zero], 1)], 0)
        with torch.no_grad():
            net.W2.copy_(W2.expand(n_layers, -1, -1))
            net.W1.copy_(W1.expand(n_layers, -1, -1))
            net.b.zero_()
        return net

    def n_parameters(self) -> int:
        """The number of parameters, :math:`L(12D^2 + 3D)`."""
        return sum(p.numel() for p in self.parameters())

    def magnetisation(self, x, t) -> torch.Tensor:
        r"""The m-part of the final state, :math:`m^L` (n, D): the network's estimate of
        :math:`\mathbb E[\sigma\mid x]`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        x = _checks.points(x, "x", self.D)
        a, h = self.sde.coefficients(t, x)
        D = self.D
        u = torch.cat([torch.zeros_like(x), a / h * x], 1)
        for W2, b, W1 in zip(self.W2, self.b, self.W1, strict=True):
            z = u @ W2.T + b
            hidden = torch.cat([torch.tanh(z[:, :D]), torch.relu(z[:, D:])], 1)
            u = u + hidden @ W1.T
        return u[:, :D]

    def forward(self, x, t) -> torch.Tensor:
        """The score ``(alpha m^L - x)/h`` (n, D).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        m = self.magnetisation(x, t)
        t = _checks.time_column(as_time(self.sde.check_time(t), like=x), x.shape[0])
        return (self.sde.alpha(t) * m - x) / self.sde.h(t)

