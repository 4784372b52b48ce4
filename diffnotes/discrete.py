r"""Discrete diffusion: a continuous-time Markov chain on sequences, its time reversal, samplers and ratio losses.

The review's Section 7.3 replaces the Gaussian noise by a continuous-time Markov chain (CTMC) on a finite state
space.  Here the states are sequences :math:`x = (x^1, \dots, x^L)` of :math:`L` tokens from :math:`\{0, \dots,
S-1\}`, and the forward chain changes one position at a time, every position independently with the same
:math:`S \times S` rate matrix :math:`Q` (a *factorised* chain).  With the review's convention, probabilities are
column vectors and

.. math::

    \frac{\mathrm d p_t}{\mathrm dt} = Q_t\,p_t, \qquad [Q]_{ab} \ge 0 \ (a \ne b) \text{ is the rate from } b
    \text{ to } a, \qquad \textstyle\sum_a [Q]_{ab} = 0,

so the **columns** of a rate matrix sum to zero (in the row convention :math:`\mathrm dp/\mathrm dt = pQ` of many
Markov-chain texts these are the rows: pass ``Q.T``).  The time reversal of the chain is again a CTMC, with rates

.. math::

    [\overline Q_t]_{yx} = [Q_t]_{xy}\,\frac{p_t(y)}{p_t(x)} \quad (y \ne x), \qquad
    \frac{\mathrm d q_\tau}{\mathrm d\tau} = \overline Q_{T-\tau}\,q_\tau, \quad q_\tau = p_{T-\tau},

and only the **ratios** :math:`p_t(y)/p_t(x)` between a sequence and its neighbours are needed: the discrete analogue
of the score, the *concrete score* :cite:p:`meng2022concrete`.  The package's protocol for it mirrors
``score(x, t)``: a **ratio function** is a callable ``ratio(x, t)`` that takes a long tensor of tokens ``x`` of shape
(n, L) and a number or one time per row, and returns a tensor (n, L, S) whose entry :math:`[l, a]` is
:math:`p_t(x^{l \leftarrow a})/p_t(x)`, :math:`x^{l\leftarrow a}` being :math:`x` with its token at position
:math:`l` set to :math:`a` (the entry at :math:`a = x^l` is 1).  :class:`ExactRatios` computes it exactly on small
state spaces; :class:`RatioNet` learns it.

Two forward kernels have closed forms :cite:p:`austin2021structured,campbell2022continuous,lou2024discrete`; both
satisfy :math:`Q^2 = -\beta Q`, hence :math:`e^{tQ} = I + Q\,(1 - e^{-\beta t})/\beta` for every real :math:`t`:

* **uniform**: :math:`Q = \tfrac{\beta}{S}\mathbf 1\mathbf 1^\top - \beta I`, every token jumps to each of the
  others at rate :math:`\beta/S`; :math:`e^{tQ} = e^{-\beta t} I + (1 - e^{-\beta t})\tfrac1S\mathbf 1\mathbf
  1^\top`, stationary law uniform (on :math:`\{0,1\}^d`, :math:`S = 2`, the bit flips of :cite:t:`chen2024convergence`);
* **absorbing** (masking): :math:`S - 1` data tokens and a mask token :math:`m = S - 1`; every data token becomes the
  mask at rate :math:`\beta`, :math:`Q = \beta(e_m\mathbf 1^\top - I)`; :math:`e^{tQ} = e^{-\beta t} I + (1 -
  e^{-\beta t})\,e_m\mathbf 1^\top`, stationary law: everything masked.

Samplers share one signature, like the continuous samplers of :mod:`diffnotes.samplers`::

    sampler(ratio, x, times, *, process, generator=None, return_trajectory=False, stats=None, **options)

``x`` is the start (a long tensor (n, L)) or its shape, then drawn from the stationary law; ``times`` is a strictly
decreasing grid :math:`T = t_0 > \dots > t_N = \delta > 0` (:func:`time_grid`), :math:`\delta` the early-stopping
time (ratios blow up at :math:`t = 0` where the data law has small or zero entries); the result is the state at
:math:`\delta`, or ``(final, trajectory)`` with the states on the grid, shape (N + 1, n, L); a dict passed as
``stats`` receives the number of ratio evaluations and of jumps.  :func:`euler`, :func:`tau_leaping` and
:func:`tweedie` make one factorised step per grid interval (first-order accurate); :func:`uniformization` simulates
the reverse chain exactly :cite:p:`chen2024convergence`.  :func:`output_law` gives the exact law of the output of the
three step methods on small state spaces, so their discretisation error is measured without Monte Carlo error.

The ratios are learned with the quadratic concrete score matching loss :cite:p:`meng2022concrete`, the denoising
score entropy of SEDD :cite:p:`lou2024discrete`, or, for the absorbing kernel, the masked-diffusion cross-entropy of
MDLM :cite:p:`sahoo2024simple` (:func:`concrete_score_matching_loss`, :func:`score_entropy_loss`,
:func:`masked_diffusion_loss`, trained by :func:`fit_ratios`).

Book chapter: *Discrete diffusion* (Part 6).  Review: Section 7.3 :cite:p:`chen2024opportunities`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch
from torch import nn
from tqdm.std import tqdm

from . import _checks

__all__ = [
    "check_rate_matrix",
    "FactorizedCTMC",
    "ExactRatios",
    "ProductRatios",
    "time_grid",
    "reverse_rates",
    "euler",
    "tau_leaping",
    "tweedie",
    "uniformization",
    "DISCRETE_SAMPLERS",
    "step_probabilities",
    "step_matrix",
    "output_law",
    "empirical_law",
    "tv",
    "expected_tv_floor",
    "chi_square_pvalue",
    "denoising_targets",
    "score_entropy",
    "concrete_score_matching_loss",
    "score_entropy_loss",
    "masked_diffusion_loss",
    "RatioNet",
    "fit_ratios",
]

Ratio = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- rate matrices and the forward chain ------------------------------------------------------------------------------
def check_rate_matrix(Q, name: str = "Q", atol: float = 1e-10) -> torch.Tensor:
    r"""Check that ``Q`` is a rate matrix in the review's column convention; return it as float64.

    A rate matrix is square, finite, has non-negative off-diagonal entries (:math:`[Q]_{ab}` is the rate from
    :math:`b` to :math:`a`) and columns that sum to zero (probability is conserved by
    :math:`\mathrm dp/\mathrm dt = Qp`).

    Parameters
    ----------
    Q : array_like
        The matrix, shape (S, S), S >= 2.
    name : str
        The argument's name, for the messages.
    atol : float
        Tolerance of the column sums, relative to the largest rate.

    Raises
    ------
    ValueError
        A wrong shape, a non-finite or negative off-diagonal entry, or a column that does not sum to zero.
    """
    try:
        Q = torch.as_tensor(np.asarray(Q, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a square array of numbers, got {type(Q).__name__}") from err
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1] or Q.shape[0] < 2:
        raise ValueError(f"{name} must be a square matrix of shape (S, S) with S >= 2, got shape {tuple(Q.shape)}")
    if not torch.all(torch.isfinite(Q)):
        raise ValueError(f"{name} must be finite")
    off = Q - torch.diag(torch.diagonal(Q))
    if torch.any(off < 0):
        a, b = (int(i) for i in torch.nonzero(off < 0)[0])
        raise ValueError(f"{name} has a negative off-diagonal entry {name}[{a}, {b}] = {float(Q[a, b]):g}: the "
                         "off-diagonal entries are jump rates and must be >= 0")
    sums = Q.sum(0)
    scale = max(float(off.abs().max()), 1.0)
    if torch.any(sums.abs() > atol * scale):
        j = int(torch.argmax(sums.abs()))
        raise ValueError(f"the columns of {name} must sum to zero (dp/dt = Q p; column b holds the rates out of "
                         f"state b, minus their sum on the diagonal); column {j} sums to {float(sums[j]):g}. In "
                         f"the row convention dp/dt = p Q pass the transpose")
    return Q


def _positive_times(t, name: str = "t") -> torch.Tensor:
    """A number or a 0-d/1-d tensor of finite times > 0, as float64."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1-D tensor of times, got shape {tuple(t.shape)}")
    if not torch.all(torch.isfinite(t)) or torch.any(t <= 0):
        raise ValueError(f"{name} must be finite and > 0 (ratios blow up at t = 0: stop early), got {t}")
    return t


def _row_times(t, n: int) -> torch.Tensor:
    """Times > 0 given as a number or one per row (n,), returned as an (n,) float64 tensor."""
    t = _positive_times(t)
    t = t.expand(n) if t.ndim == 0 else t
    if t.shape != (n,):
        raise ValueError(f"t must be a number or one time per row (shape ({n},)), got shape {tuple(t.shape)}")
    return t


class FactorizedCTMC:
    r"""The forward chain: every position of a length-``length`` sequence jumps independently with rate matrix Q.

    The rate matrix on sequences is the Kronecker sum :math:`\mathbf Q = \sum_l I \otimes \dots \otimes Q \otimes
    \dots \otimes I` (:meth:`generator_matrix`) and the transition kernel factorises,
    :math:`P(X_t = y \mid X_0 = x) = \prod_l [e^{tQ}]_{y^l x^l}`.  Use :meth:`uniform` and :meth:`absorbing` for the
    two kernels with closed forms (module docstring); any other rate matrix gets its kernel from the matrix
    exponential.

    Parameters
    ----------
    Q : array_like
        Rate matrix per position, shape (S, S), columns summing to zero (:func:`check_rate_matrix`).
    length : int
        The sequence length L.
    kind : {"custom", "uniform", "absorbing"}
        Set by the constructors; selects the closed forms.
    rate : float, optional
        :math:`\beta` of the closed forms (set by the constructors).
    """

    def __init__(self, Q, length: int, *, kind: str = "custom", rate: float | None = None):
        self.Q = check_rate_matrix(Q)
        self.L = _checks.positive_int(length, "length")
        if kind not in ("custom", "uniform", "absorbing"):
            raise ValueError(f"kind must be 'custom', 'uniform' or 'absorbing', got {kind!r}")
        self.kind = kind
        self.S = self.Q.shape[0]
        self.rate = None if rate is None else float(rate)
        self.mask = self.S - 1 if kind == "absorbing" else None
        self.n_data = self.S - 1 if kind == "absorbing" else self.S
        if self.S ** self.L > 2**20:
            self._enumerable = False
        else:
            self._enumerable = True

    @classmethod
    def uniform(cls, n_tokens: int, length: int, rate: float = 1.0) -> FactorizedCTMC:
        r"""Uniform kernel on ``n_tokens`` tokens: :math:`Q = \tfrac{\beta}{S}\mathbf 1\mathbf 1^\top - \beta I`.

        Parameters
        ----------
        n_tokens : int
            The vocabulary size S, at least 2.
        length : int
            The sequence length L.
        rate : float
            :math:`\beta > 0`, the total jump rate of a position.
        """
        S = _checks.positive_int(n_tokens, "n_tokens", 2)
        beta = _rate(rate)
        Q = beta / S * np.ones((S, S)) - beta * np.eye(S)
        return cls(Q, length, kind="uniform", rate=beta)

    @classmethod
    def absorbing(cls, n_tokens: int, length: int, rate: float = 1.0) -> FactorizedCTMC:
        r"""Absorbing kernel: ``n_tokens`` data tokens, mask ``n_tokens``; :math:`Q = \beta(e_m\mathbf 1^\top - I)`.

        Parameters
        ----------
        n_tokens : int
            The number of data tokens, at least 1 (S = ``n_tokens + 1`` with the mask).
        length : int
            The sequence length L.
        rate : float
            :math:`\beta > 0`, the rate at which a data token becomes the mask.
        """
        n = _checks.positive_int(n_tokens, "n_tokens", 1)
        beta = _rate(rate)
        S = n + 1
        Q = -beta * np.eye(S)
        Q[S - 1, :] += beta
        return cls(Q, length, kind="absorbing", rate=beta)

    def __repr__(self) -> str:
        extra = f", rate={self.rate:g}" if self.rate is not None else ""
        return f"FactorizedCTMC(kind={self.kind!r}, S={self.S}, L={self.L}{extra})"

    # -- kernels ------------------------------------------------------------------------------------------------
    def transition(self, t) -> torch.Tensor:
        r"""The per-position kernel :math:`e^{tQ}` ([a, b]: probability of a at time t given b at 0).

        ``t`` is a number (result (S, S)) or a 1-D tensor (result (n, S, S)); negative times are allowed (the
        inverse kernel, used by :func:`tweedie`).  Closed form :math:`I + Q(1 - e^{-\beta t})/\beta` for the two
        named kernels, :func:`torch.linalg.matrix_exp` otherwise.

        Parameters
        ----------
        t : float or torch.Tensor
            A finite time, or a 1-D tensor of them.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.ndim > 1 or not torch.all(torch.isfinite(t)):
            raise ValueError(f"t must be a finite number or a 1-D tensor of times, got {t}")
        if self.kind == "custom":
            return torch.linalg.matrix_exp(t[..., None, None] * self.Q)
        c = -torch.expm1(-self.rate * t) / self.rate
        return torch.eye(self.S, dtype=torch.float64) + c[..., None, None] * self.Q

    def transition_expm(self, t: float) -> np.ndarray:
        """:math:`e^{tQ}` by :func:`scipy.linalg.expm` (the reference for the closed forms).

        Parameters
        ----------
        t : float
            The time.
        """
        return scipy.linalg.expm(float(t) * self.Q.numpy())

    def prior(self) -> torch.Tensor:
        """The stationary law of one position (uniform, or all mass on the mask), shape (S,)."""
        if self.kind == "uniform":
            return torch.full((self.S,), 1.0 / self.S, dtype=torch.float64)
        if self.kind == "absorbing":
            return torch.nn.functional.one_hot(torch.tensor(self.mask), self.S).double()
        w, v = np.linalg.eig(self.Q.numpy())
        p = np.real(v[:, np.argmin(np.abs(w))])
        return torch.as_tensor(p / p.sum())

    def exit_bound(self, t) -> torch.Tensor:
        r"""An upper bound, valid for every data law, on the reverse exit rate of one position at time t.

        The reverse rate to :math:`x^{l\leftarrow a}` is :math:`[Q]_{x^l a}\,p_t(x^{l\leftarrow a})/p_t(x)`, and the
        ratio is an average of kernel ratios :math:`[e^{tQ}]_{a c}/[e^{tQ}]_{x^l c}`.  Uniform kernel:
        :math:`\beta\frac{S-1}{S}\,\frac{1 + (S-1)e^{-\beta t}}{1 - e^{-\beta t}}`; absorbing: the exit rate of a
        masked position is exactly :math:`\beta e^{-\beta t}/(1 - e^{-\beta t})`.  Both decrease in t and grow like
        :math:`1/t` as :math:`t \to 0`, which is what makes the number of uniformisation events logarithmic in
        the early-stopping time :cite:p:`chen2024convergence`.

        Parameters
        ----------
        t : float or torch.Tensor
            A time > 0, or a 1-D tensor of them.

        Raises
        ------
        ValueError
            For a kernel other than the uniform and absorbing ones (no closed form).
        """
        t = _positive_times(t)
        e = torch.exp(-self.rate * t) if self.rate is not None else None
        if self.kind == "uniform":
            return self.rate * (self.S - 1) / self.S * (1 + (self.S - 1) * e) / (-torch.expm1(-self.rate * t))
        if self.kind == "absorbing":
            return self.rate * e / (-torch.expm1(-self.rate * t))
        raise ValueError("exit_bound has a closed form only for the uniform and absorbing kernels; give "
                         "uniformization a rate_bound")

    # -- states and laws ----------------------------------------------------------------------------------------
    def _require_enumerable(self):
        if not self._enumerable:
            raise ValueError(f"S^L = {self.S}^{self.L} states are too many to enumerate")

    def states(self) -> torch.Tensor:
        """All :math:`S^L` sequences, shape (S^L, L), in lexicographic order (:meth:`index` inverts it)."""
        self._require_enumerable()
        return torch.cartesian_prod(*[torch.arange(self.S)] * self.L).reshape(-1, self.L)

    def data_states(self) -> torch.Tensor:
        """All sequences of data tokens (no mask), shape (n_data^L, L), lexicographic."""
        self._require_enumerable()
        return torch.cartesian_prod(*[torch.arange(self.n_data)] * self.L).reshape(-1, self.L)

    def index(self, x) -> torch.Tensor:
        """The position of each row of ``x`` in :meth:`states` (base-S number), shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Integer tokens, shape (n, L).
        """
        x = self.check_tokens(x)
        powers = self.S ** torch.arange(self.L - 1, -1, -1)
        return (x * powers).sum(1)

    def embed(self, p_data) -> torch.Tensor:
        """A law on :meth:`data_states` (shape (n_data^L,)) as a law on :meth:`states` (zero on masked ones).

        Parameters
        ----------
        p_data : array_like
            A probability vector on :meth:`data_states`, shape (n_data^L,).
        """
        p = _law(p_data, self.n_data ** self.L, "p_data")
        out = torch.zeros(self.S ** self.L, dtype=torch.float64)
        out[self.index(self.data_states())] = p
        return out

    def check_tokens(self, x, name: str = "x", *, data: bool = False) -> torch.Tensor:
        """Check that ``x`` is an integer tensor (n, L) of tokens in the vocabulary; return it as long.

        Parameters
        ----------
        x : torch.Tensor
            The tokens, shape (n, L).
        name : str
            The argument's name, for the messages.
        data : bool
            Whether only data tokens are allowed (the mask of the absorbing kernel is then refused).
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor of tokens, shape (n, {self.L}), got {type(x).__name__}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of tokens, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self.L:
            raise ValueError(f"{name} must have shape (n, {self.L}), got {tuple(x.shape)}")
        top = self.n_data if data else self.S
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= top):
            bad = int(x.min()) if int(x.min()) < 0 else int(x.max())
            what = "data tokens" if data else "tokens"
            raise ValueError(f"{name} contains {bad}, outside the vocabulary of {what} {{0, ..., {top - 1}}}")
        return x.long()

    def generator_matrix(self) -> torch.Tensor:
        r"""The rate matrix on sequences, :math:`S^L \times S^L`, a Kronecker sum (for brute-force checks)."""
        self._require_enumerable()
        eye = torch.eye(self.S, dtype=torch.float64)
        total = torch.zeros(self.S ** self.L, self.S ** self.L, dtype=torch.float64)
        for pos in range(self.L):
            term = torch.ones(1, 1, dtype=torch.float64)
            for other in range(self.L):
                term = torch.kron(term, self.Q if other == pos else eye)
            total += term
        return total

    def marginal(self, p0, t) -> torch.Tensor:
        r"""The exact law :math:`p_t = (e^{tQ})^{\otimes L} p_0` on :meth:`states`, shape (S^L,).

        ``p0`` is a law on :meth:`states` (use :meth:`embed` for a law on the data sequences).

        Parameters
        ----------
        p0 : array_like
            A probability vector on :meth:`states`, shape (S^L,).
        t : float
            One time > 0.
        """
        p = _law(p0, self.S ** self.L, "p0").reshape([self.S] * self.L)
        K = self.transition(float(_positive_times(t)))
        for pos in range(self.L):
            p = torch.movedim(torch.tensordot(K, p, dims=([1], [pos])), 0, pos)
        return p.reshape(-1)

    def perturb(self, x0, t, generator=None) -> torch.Tensor:
        """Draw :math:`x_t \\sim P(\\cdot \\mid x_0)` position by position (one time per row or one for all).

        Parameters
        ----------
        x0 : torch.Tensor
            Integer tokens at time 0, shape (n, L).
        t : float or torch.Tensor
            One time > 0, or one per row (n,).
        generator : None, int, torch.Generator or numpy.random.Generator
            Source of the draws.
        """
        x0 = self.check_tokens(x0, "x0")
        n = x0.shape[0]
        t = _row_times(t, n)
        K = self.transition(t)  # (n, S, S)
        probs = torch.gather(K, 2, x0[:, None, :].expand(n, self.S, self.L))  # (n, S, L): column x0^l
        return _categorical(probs.transpose(1, 2), _checks.generator(generator))

    def sample_law(self, p, n: int, generator=None) -> torch.Tensor:
        """Draw ``n`` sequences from a law ``p`` on :meth:`states`, shape (n, L).

        Parameters
        ----------
        p : array_like
            A probability vector on :meth:`states`, shape (S^L,).
        n : int
            Number of draws, at least 1.
        generator : None, int, torch.Generator or numpy.random.Generator
            Source of the draws.
        """
        p = _law(p, self.S ** self.L, "p")
        n = _checks.positive_int(n, "n")
        idx = torch.multinomial(p, n, replacement=True, generator=_checks.generator(generator))
        return self.states()[idx]

    def sample_prior(self, n: int, generator=None) -> torch.Tensor:
        """Draw ``n`` sequences from the stationary law (uniform tokens, or all masks), shape (n, L).

        Parameters
        ----------
        n : int
            Number of draws, at least 1.
        generator : None, int, torch.Generator or numpy.random.Generator
            Source of the draws.
        """
        n = _checks.positive_int(n, "n")
        probs = self.prior().expand(n, self.L, self.S)
        return _categorical(probs, _checks.generator(generator))

    def reverse_generator(self, p) -> torch.Tensor:
        r"""The reverse rate matrix on sequences, :math:`\overline Q_{yx} = \mathbf Q_{xy}p(y)/p(x)`, p > 0.

        The formula of the review, Section 7.3, on the whole state space (a brute-force reference); the diagonal
        makes the columns sum to zero.

        Parameters
        ----------
        p : array_like
            A probability vector on :meth:`states`, shape (S^L,), positive on every state.
        """
        p = _law(p, self.S ** self.L, "p")
        if torch.any(p <= 0):
            raise ValueError("p must be positive on every state to define the reverse rates")
        Qf = self.generator_matrix()
        Qr = Qf.T * p[:, None] / p[None, :]
        Qr -= torch.diag(torch.diagonal(Qr))
        return Qr - torch.diag(Qr.sum(0))


def _rate(rate) -> float:
    try:
        beta = float(rate)
    except (TypeError, ValueError) as err:
        raise TypeError(f"rate must be a number, got {rate!r}") from err
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"rate must be finite and > 0, got {rate!r}")
    return beta


def _law(p, size: int, name: str) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(p, dtype=np.float64)).reshape(-1) if not isinstance(p, torch.Tensor) else \
        p.detach().to(torch.float64).reshape(-1)
    if p.numel() != size:
        raise ValueError(f"{name} must have {size} entries (one per state), got {p.numel()}")
    if not torch.all(torch.isfinite(p)) or torch.any(p < 0) or abs(float(p.sum()) - 1) > 1e-9:
        raise ValueError(f"{name} must be a probability vector (finite, >= 0, summing to 1)")
    return p


def _categorical(probs: torch.Tensor, gen) -> torch.Tensor:
    """One draw per row of the last axis of ``probs`` (float64, as the sampling of categoricals must be)."""
    shape = probs.shape[:-1]
    flat = probs.reshape(-1, probs.shape[-1]).to(torch.float64).clamp_min(0)
    cdf = torch.cumsum(flat, 1)
    u = torch.rand(flat.shape[0], 1, generator=gen, dtype=torch.float64) * cdf[:, -1:]
    out = torch.searchsorted(cdf, u, right=True).clamp_max(probs.shape[-1] - 1)
    return out.reshape(shape)


# -- exact ratios -----------------------------------------------------------------------------------------------
class ExactRatios:
    r"""The exact concrete score :math:`p_t(x^{l\leftarrow a})/p_t(x)` of a law on a small state space.

    With :math:`p_t(y) = \sum_{x_0} p_0(x_0)\prod_l K_t(y^l \mid x_0^l)`, :math:`K_t = e^{tQ}`, the numerators for
    all :math:`(l, a)` come from one contraction per position: :math:`p_t(x^{l\leftarrow a}) = \sum_c K_t(a\mid c)\,
    G_l(c)` with :math:`G_l(c) = \sum_{x_0: x_0^l = c} p_0(x_0)\prod_{l'\ne l}K_t(x^{l'}\mid x_0^{l'})`.  A sequence of
    probability zero under :math:`p_t` gets ratio 0 towards all its neighbours (the reverse chain never visits it).
    When all rows share one time (the grid samplers), the numerators are read off the marginal :math:`p_t` on all
    :math:`S^L` states instead (the same numbers, much cheaper).  Calling the object is the ratio protocol of the
    module.

    Parameters
    ----------
    process : FactorizedCTMC
        The forward chain.
    p_data : array_like
        The data law on ``process.data_states()`` (shape (n_data^L,)).
    chunk : int
        Rows per batch when the rows have different times (bounds the memory of the contraction).
    """

    def __init__(self, process: FactorizedCTMC, p_data, chunk: int = 4096):
        self.process = _check_process(process)
        self.p_data = _law(p_data, process.n_data ** process.L, "p_data")
        self.p0 = process.embed(self.p_data)
        self._x0 = process.data_states()
        # one-hot of every data sequence, position first: (L, M, S)
        self._onehot = nn.functional.one_hot(self._x0.T, process.S).to(torch.float64)
        self.chunk = int(chunk)

    def law(self, t) -> torch.Tensor:
        """The exact marginal :math:`p_t` on ``process.states()``, shape (S^L,).

        Parameters
        ----------
        t : float
            One time > 0.
        """
        return self.process.marginal(self.p0, t)

    def __call__(self, x, t) -> torch.Tensor:
        pr = self.process
        x = pr.check_tokens(x)
        n = x.shape[0]
        t = _row_times(t, n)
        if n > 0 and pr._enumerable and bool(torch.all(t == t[0])):
            return self._table_ratios(x, float(t[0]))
        out = torch.empty(n, pr.L, pr.S, dtype=torch.float64)
        for lo in range(0, n, self.chunk):
            out[lo:lo + self.chunk] = self._ratios(x[lo:lo + self.chunk], t[lo:lo + self.chunk])
        return out

    def _table_ratios(self, x, t: float):
        """One time for all rows: look the numerators up in the marginal :math:`p_t` on all states (cheap)."""
        pr = self.process
        p = self.law(t)
        idx = pr.index(x)
        powers = pr.S ** torch.arange(pr.L - 1, -1, -1)
        neighbours = idx[:, None, None] + (torch.arange(pr.S)[None, None, :] - x[:, :, None]) * powers[None, :, None]
        den = p[idx][:, None, None]
        ratio = torch.where(den > 0, p[neighbours] / torch.where(den > 0, den, 1.0), 0.0)
        return ratio.scatter(2, x[:, :, None], 1.0)

    def _ratios(self, x, t):
        pr = self.process
        n, L, S = x.shape[0], pr.L, pr.S
        K = pr.transition(t)  # (n, S, S)
        rows = torch.gather(K, 1, x[:, :, None].expand(n, L, S))  # (n, L, S): K(x^l | c)
        factors = torch.matmul(rows.transpose(0, 1), self._onehot.transpose(1, 2))  # (L, n, M): K(x^l | x0^l)
        others = torch.empty_like(factors)  # prod over l' != l, from products before and after l
        others[0] = self.p_data
        for pos in range(1, L):
            others[pos] = others[pos - 1] * factors[pos - 1]
        after = torch.ones_like(factors[0])
        for pos in range(L - 1, -1, -1):
            others[pos] *= after
            after = after * factors[pos]
        G = torch.matmul(others, self._onehot)  # (L, n, S): G_l(c)
        num = torch.einsum("kac,lkc->kla", K, G)
        den = num[:, 0].gather(1, x[:, :1])  # p_t(x)
        positive = den > 0
        ratio = torch.where(positive[:, :, None], num / torch.where(positive, den, 1.0)[:, :, None], 0.0)
        return ratio.scatter(2, x[:, :, None], 1.0)

    def denoiser(self, x, t) -> torch.Tensor:
        r"""The exact posterior :math:`P(x_0^l = c \mid x_t = x)` of every position, shape (n, L, n_data).

        Parameters
        ----------
        x : torch.Tensor
            Integer tokens at time t, shape (n, L).
        t : float or torch.Tensor
            One time > 0, or one per row (n,).
        """
        pr = self.process
        x = pr.check_tokens(x)
        n = x.shape[0]
        t = _row_times(t, n)
        K = pr.transition(t)
        rows = torch.gather(K, 1, x[:, :, None].expand(n, pr.L, pr.S))
        w = rows[:, torch.arange(pr.L)[:, None], self._x0.T].prod(1) * self.p_data  # (n, M)
        w = w / w.sum(1, keepdim=True)
        out = torch.zeros(n, pr.L, pr.n_data, dtype=torch.float64)
        for pos in range(pr.L):
            out[:, pos] = torch.zeros(n, pr.n_data, dtype=torch.float64).index_add_(1, self._x0[:, pos], w)
        return out


class ProductRatios:
    r"""Exact ratios of a product data law :math:`p_0 = \bigotimes_l q_l`, for any length (no enumeration).

    The forward chain keeps the law a product, :math:`p_t = \bigotimes_l K_t q_l`, so the ratio of position l is
    :math:`[K_t q_l]_a/[K_t q_l]_{x^l}`: the hypercube set-up of :cite:t:`chen2024convergence` in high dimension.
    Calling the object is the ratio protocol.

    Parameters
    ----------
    process : FactorizedCTMC
        The forward chain.
    marginals : array_like
        The laws :math:`q_l` of the positions, shape (L, n_data), rows summing to one.
    """

    def __init__(self, process: FactorizedCTMC, marginals):
        self.process = _check_process(process)
        q = torch.as_tensor(np.asarray(marginals, dtype=np.float64))
        if q.shape != (process.L, process.n_data):
            raise ValueError(f"marginals must have shape ({process.L}, {process.n_data}), got {tuple(q.shape)}")
        if not torch.all(torch.isfinite(q)) or torch.any(q < 0) or torch.any((q.sum(1) - 1).abs() > 1e-9):
            raise ValueError("each row of marginals must be a probability vector")
        self.q = torch.zeros(process.L, process.S, dtype=torch.float64)
        self.q[:, :process.n_data] = q

    def __call__(self, x, t) -> torch.Tensor:
        pr = self.process
        x = pr.check_tokens(x)
        n = x.shape[0]
        t = _row_times(t, n)
        m = torch.einsum("kac,lc->kla", pr.transition(t), self.q)  # (n, L, S): [K_t q_l]_a
        den = m.gather(2, x[:, :, None])
        return torch.where(den > 0, m / torch.where(den > 0, den, 1.0), 0.0).scatter(2, x[:, :, None], 1.0)


# -- reverse rates and samplers ---------------------------------------------------------------------------------
def time_grid(T: float, t0: float, n_steps: int, spacing: str = "log") -> torch.Tensor:
    """A decreasing grid of ``n_steps + 1`` times from T to the early-stopping time t0 (``"uniform"`` or ``"log"``).

    Parameters
    ----------
    T : float
        The first time (finite).
    t0 : float
        The early-stopping time, 0 < t0 < T.
    n_steps : int
        Number of steps, at least 1.
    spacing : {"log", "uniform"}
        Uniform in :math:`\\log t` (dense near t0, the default) or in t.
    """
    T, t0 = float(T), float(t0)
    if not (math.isfinite(T) and 0 < t0 < T):
        raise ValueError(f"need 0 < t0 < T (finite), got t0 = {t0:g}, T = {T:g}")
    n_steps = _checks.positive_int(n_steps, "n_steps")
    u = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    if spacing == "uniform":
        grid = T + (t0 - T) * u
    elif spacing == "log":
        grid = torch.exp(math.log(T) + (math.log(t0) - math.log(T)) * u)
    else:
        raise ValueError(f"spacing must be 'uniform' or 'log', got {spacing!r}")
    grid[0], grid[-1] = T, t0
    return grid


def _call_ratio(ratio, x, t, process) -> torch.Tensor:
    r = ratio(x, t)
    shape = (x.shape[0], process.L, process.S)
    if not isinstance(r, torch.Tensor) or tuple(r.shape) != shape:
        raise ValueError(f"ratio(x, t) must return a tensor of shape {shape}, got {getattr(r, 'shape', type(r))}")
    r = r.detach().to(torch.float64)
    if not torch.all(torch.isfinite(r)) or torch.any(r < 0):
        raise ValueError("ratio(x, t) returned negative or non-finite values (ratios of probabilities are >= 0)")
    return r


def reverse_rates(ratio, x, t, process: FactorizedCTMC) -> torch.Tensor:
    r"""The reverse jump rates :math:`[\overline Q_t]_{x^{l\leftarrow a},x} = [Q]_{x^l a}\,r_t(x)_{l,a}`, (n, L, S).

    Entry :math:`[k, l, a]` is the rate at which the reverse chain in state ``x[k]`` moves position l to token a
    (0 for :math:`a = x^l`).  ``ratio`` is a ratio function (module docstring).

    Parameters
    ----------
    ratio : callable
        The ratio function ``ratio(x, t) -> (n, L, S)``.
    x : torch.Tensor
        Integer tokens, shape (n, L).
    t : float or torch.Tensor
        The time, passed to ``ratio`` as given (a number or one time per row).
    process : FactorizedCTMC
        The forward chain.
    """
    x = process.check_tokens(x)
    r = _call_ratio(ratio, x, t, process)
    fwd = process.Q[x]  # (n, L, S): [Q]_{x^l, a}, the forward rate from a into x^l
    rates = fwd * r
    return rates.scatter(2, x[:, :, None], 0.0)


def step_probabilities(method: str, ratio, x, t: float, t_next: float, process: FactorizedCTMC) -> torch.Tensor:
    r"""Per-position laws of one reverse step from t to t' < t, shape (n, L, S) (positions move independently).

    With :math:`h = t - t'` and :math:`\rho_a` the reverse rates of a position (:func:`reverse_rates`):

    * ``"euler"``: :math:`P(a) = h\rho_a` (:math:`a \ne x^l`), the rest stays; when :math:`h\sum_a\rho_a > 1` the
      jump probabilities are scaled to sum to 1 :cite:p:`campbell2022continuous,lou2024discrete`;
    * ``"tau"``: tau-leaping :cite:p:`gillespie2001approximate,campbell2022continuous`: Poisson numbers of jumps
      with means :math:`h\rho_a`; a position with exactly one jump takes it, with none or several it stays:
      :math:`P(a) = h\rho_a e^{-h\sum_b\rho_b}`;
    * ``"tweedie"``: the analytic step of SEDD :cite:p:`lou2024discrete`,
      :math:`P(b) \propto [e^{-hQ} r]_b\,[e^{hQ}]_{x^l b}` (negative entries of the first factor set to 0),
      exact for one position with exact ratios.

    Parameters
    ----------
    method : {"euler", "tau", "tweedie"}
        The step rule above.
    ratio : callable
        The ratio function ``ratio(x, t) -> (n, L, S)``.
    x : torch.Tensor
        Integer tokens at time t, shape (n, L).
    t, t_next : float
        The step's times, t > t_next (the ratios are evaluated at t).
    process : FactorizedCTMC
        The forward chain.
    """
    h = float(t) - float(t_next)
    if not h > 0:
        raise ValueError(f"a reverse step needs t > t_next, got t = {t}, t_next = {t_next}")
    if method in ("euler", "tau"):
        rates = reverse_rates(ratio, x, t, process)
        jump = h * rates
        if method == "euler":
            total = jump.sum(2, keepdim=True)
            jump = jump / total.clamp_min(1.0)
        else:
            jump = jump * torch.exp(-jump.sum(2, keepdim=True))
        return jump.scatter(2, x[:, :, None], (1 - jump.sum(2, keepdim=True)).clamp_min(0))
    if method == "tweedie":
        x = process.check_tokens(x)
        r = _call_ratio(ratio, x, t, process)
        back = process.transition(-h)  # e^{-hQ}
        fwd = process.transition(h)  # e^{hQ}
        a = (r @ back.T).clamp_min(0)  # [e^{-hQ} r]_b
        p = a * fwd[x]  # row x^l of e^{hQ}
        total = p.sum(2, keepdim=True)
        if torch.any(total <= 0):
            raise FloatingPointError("the Tweedie step produced an all-zero law; the ratios are inconsistent")
        return p / total
    raise ValueError(f"method must be 'euler', 'tau' or 'tweedie', got {method!r}")


def _check_times(times) -> torch.Tensor:
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"times must be a 1-D grid of at least 2 times (T, ..., t0), got shape "
                         f"{tuple(times.shape)}")
    if not torch.all(torch.isfinite(times)) or not torch.all(times[1:] < times[:-1]):
        raise ValueError("times must be finite and strictly decreasing, from T down to the early-stopping time")
    if times[-1] <= 0:
        raise ValueError(f"the last time must be > 0 (ratios blow up at t = 0), got {float(times[-1]):g}")
    return times


def _start(x, process, gen) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return process.check_tokens(x).clone()
    shape = tuple(int(s) for s in x)
    if len(shape) != 2 or shape[0] < 1 or shape[1] != process.L:
        raise ValueError(f"a start shape must be (n, {process.L}) with n >= 1, got {x!r}")
    return process.sample_prior(shape[0], gen)


def _check_process(process):
    if not isinstance(process, FactorizedCTMC):
        raise TypeError(f"process must be a FactorizedCTMC, got {type(process).__name__}")
    return process


class _Chain:
    """What every sampler of this module shares: the checked ratio, process, grid and generator, the start, the
    trajectory and the jump counts (the discrete counterpart of the samplers' loop of :mod:`diffnotes.samplers`;
    tokens, not Gaussian states, so a loop of its own)."""

    def __init__(self, ratio, x, times, process, generator, return_trajectory: bool):
        if not callable(ratio):
            raise TypeError("ratio must be a callable ratio(x, t) returning (n, L, S) ratios")
        self.process = _check_process(process)
        self.times = _check_times(times)
        self.gen = _checks.generator(generator)
        self.x = _start(x, self.process, self.gen)
        self.trajectory = [self.x.clone()] if return_trajectory else None
        self.jumps = torch.zeros(self.x.shape[0], dtype=torch.long)

    def record(self, x: torch.Tensor) -> None:
        """Make ``x`` the state at the next grid time (kept in the trajectory when one is returned)."""
        self.x = x
        if self.trajectory is not None:
            self.trajectory.append(x.clone())

    def result(self):
        """The final state, or (final, trajectory)."""
        return self.x if self.trajectory is None else (self.x, torch.stack(self.trajectory))


#: The arguments of every sampler of this module, added to the docstrings of :func:`euler`, :func:`tau_leaping` and
#: :func:`tweedie` by :func:`_stepper`.
_SAMPLER_PARAMETERS = """
Parameters
----------
ratio : callable
    The ratio function ``ratio(x, t) -> (n, L, S)`` (module docstring), e.g. :class:`ExactRatios` or
    :meth:`RatioNet.ratio`; called with one time for all rows.
x : torch.Tensor or tuple of int
    The start: integer tokens (n, L) (copied), or a shape (n, L) to draw the start from the stationary law of
    ``process`` with ``generator``.
times : array_like
    The grid, strictly decreasing from T to the early-stopping time > 0 (:func:`time_grid`); one step per interval.
process : FactorizedCTMC
    The forward chain.
generator : None, int, torch.Generator or numpy.random.Generator
    Source of the start (for a shape) and of every draw.
return_trajectory : bool
    Also return the states at the grid times, shape (N + 1, n, L).
stats : dict, optional
    Receives ``ratio_calls`` (one per step) and ``jumps`` (token changes per chain, (n,)).

Returns
-------
torch.Tensor or (torch.Tensor, torch.Tensor)
    The tokens at the last grid time (n, L); with ``return_trajectory``, also the trajectory.
"""


def _stepper(method: str, doc: str):
    def sampler(ratio: Ratio, x, times, *, process: FactorizedCTMC, generator=None, return_trajectory=False,
                stats: dict | None = None):
        run = _Chain(ratio, x, times, process, generator, return_trajectory)
        times = run.times
        with torch.no_grad():
            for k in range(times.numel() - 1):
                probs = step_probabilities(method, ratio, run.x, float(times[k]), float(times[k + 1]), run.process)
                new = _categorical(probs, run.gen)
                run.jumps += (new != run.x).sum(1)
                run.record(new)
        if stats is not None:
            stats.update(ratio_calls=times.numel() - 1, jumps=run.jumps)
        return run.result()

    sampler.__name__ = sampler.__qualname__ = {"euler": "euler", "tau": "tau_leaping", "tweedie": "tweedie"}[method]
    sampler.__doc__ = doc + _SAMPLER_PARAMETERS
    return sampler


euler = _stepper("euler", r"""Euler steps of the reverse CTMC (first order in the step size).

Every position moves independently over a step :math:`h` with the probabilities
:math:`h[\overline Q_t]_{x^{l\leftarrow a},x}` (:func:`step_probabilities`, ``"euler"``), the rates frozen at the start
of the step :cite:p:`campbell2022continuous,lou2024discrete`.  Signature in the module docstring; ``stats`` receives
``ratio_calls`` (one per step) and ``jumps`` (token changes per chain).
""")

tau_leaping = _stepper("tau", r"""Tau-leaping for the reverse CTMC (first order in the step size).

Poisson numbers of jumps with means :math:`h[\overline Q_t]` for every position and target token, rates frozen on the
step; a position with exactly one jump takes it :cite:p:`gillespie2001approximate,campbell2022continuous`
(:func:`step_probabilities`, ``"tau"``).  Signature in the module docstring.
""")

tweedie = _stepper("tweedie", r"""The analytic ("Tweedie tau-leaping") step of SEDD.

:math:`P(x_{t'}^l = b \mid x_t) \propto [e^{-(t-t')Q} r_t(x_t)_l]_b\,[e^{(t-t')Q}]_{x_t^l b}`
:cite:p:`lou2024discrete`: the exact one-position posterior written with ratios, applied to every position
independently (:func:`step_probabilities`, ``"tweedie"``).  For the absorbing kernel with exact ratios it is the
ancestral step of masked diffusion :cite:p:`sahoo2024simple`.  Signature in the module docstring.
""")


def uniformization(ratio: Ratio, x, times, *, process: FactorizedCTMC, generator=None, return_trajectory=False,
                   stats: dict | None = None, rate_bound=None):
    r"""Exact simulation of the reverse CTMC by uniformisation :cite:p:`chen2024convergence`.

    On each interval :math:`(t', t]` of the grid take :math:`\lambda \ge \sup_{s\in(t',t]}\sup_x` (exit rate of
    :math:`x` at s), here :math:`\lambda = L\cdot` :meth:`FactorizedCTMC.exit_bound` :math:`(t')` (the bound
    decreases in time).  Draw :math:`N \sim \mathrm{Poisson}(\lambda(t - t'))` event times uniformly on the
    interval; at each, in decreasing time :math:`s`, jump from x to :math:`x^{l\leftarrow a}` with probability
    :math:`[\overline Q_s]_{x^{l\leftarrow a}, x}/\lambda`, otherwise stay.  This is the reverse chain itself (a
    Poisson clock of rate :math:`\lambda` thinned to the true rates), so the output has the law :math:`p_\delta`
    exactly when the ratios are exact and the start has law :math:`p_T`: no discretisation error, at a random
    number of ratio evaluations of mean :math:`\sum_k \lambda_k h_k \approx L(S-1)\log(T/\delta)` on a fine grid.
    The grid only sets how tight :math:`\lambda` is.

    Parameters
    ----------
    ratio, x, times, process, generator, return_trajectory
        As in :func:`euler` (the ratio is called with one time per row, the chains' event times); the
        trajectory holds the states at the grid times.
    stats : dict, optional
        Receives ``events`` (Poisson events per chain, the ratio evaluations one chain needs), ``jumps`` (token
        changes per chain), ``expected_events`` (:math:`\sum_k\lambda_k h_k`) and ``ratio_calls`` (batched calls).
    rate_bound : callable, optional
        ``rate_bound(t)`` bounds the exit rate of one position at time t (default: the kernel's closed form).  An
        exit rate above :math:`\lambda` (e.g. learned ratios that exceed the bound) raises ``ValueError``.
    """
    run = _Chain(ratio, x, times, process, generator, return_trajectory)
    process, times, gen, x, jumps = run.process, run.times, run.gen, run.x, run.jumps
    n = x.shape[0]
    bound = process.exit_bound if rate_bound is None else rate_bound
    events = torch.zeros(n, dtype=torch.long)
    expected, calls = 0.0, 0
    with torch.no_grad():
        for k in range(times.numel() - 1):
            t_hi, t_lo = float(times[k]), float(times[k + 1])
            lam = process.L * float(torch.as_tensor(bound(torch.tensor(t_lo, dtype=torch.float64))))
            if not (math.isfinite(lam) and lam >= 0):
                raise ValueError(f"the rate bound must be finite and >= 0, got {lam}")
            h = t_hi - t_lo
            expected += lam * h
            count = torch.poisson(torch.full((n,), lam * h, dtype=torch.float64), generator=gen).long()
            events += count
            m = int(count.max()) if n else 0
            if m == 0:
                run.record(x)
                continue
            when = t_lo + h * torch.rand(n, m, generator=gen, dtype=torch.float64)
            # a chain's own count of uniform times, in decreasing order (unused slots sorted to the end)
            when = when.masked_fill(torch.arange(m)[None, :] >= count[:, None], -math.inf)
            when = torch.sort(when, dim=1, descending=True).values
            for j in range(m):
                active = torch.nonzero(count > j).reshape(-1)
                xa = x[active]
                rates = reverse_rates(ratio, xa, when[active, j], process).reshape(active.numel(), -1)
                calls += 1
                cum = torch.cumsum(rates, 1)
                if torch.any(cum[:, -1] > lam * (1 + 1e-9)):
                    raise ValueError(f"an exit rate {float(cum[:, -1].max()):.4g} exceeds the uniformisation "
                                     f"bound {lam:.4g}: give a larger rate_bound")
                u = torch.rand(active.numel(), 1, generator=gen, dtype=torch.float64) * lam
                choice = torch.searchsorted(cum, u, right=True).reshape(-1)
                moved = choice < rates.shape[1]
                pos, tok = choice[moved] // process.S, choice[moved] % process.S
                rows = active[moved]
                x[rows, pos] = tok
                jumps[rows] += 1
            run.record(x)  # x moves in place: the state at the grid time t_lo
    if stats is not None:
        stats.update(events=events, jumps=jumps, expected_events=expected, ratio_calls=calls)
    return run.result()


DISCRETE_SAMPLERS = {"euler": euler, "tau_leaping": tau_leaping, "tweedie": tweedie,
                     "uniformization": uniformization}


# -- exact laws of the step methods and distances -------------------------------------------------------------------
def step_matrix(method: str, ratio, process: FactorizedCTMC, t: float, t_next: float) -> torch.Tensor:
    """The exact transition matrix of one step on all :math:`S^L` states ([y, x]: probability of y from x).

    Parameters
    ----------
    method : {"euler", "tau", "tweedie"}
        The step rule (:func:`step_probabilities`).
    ratio : callable
        The ratio function ``ratio(x, t) -> (n, L, S)``.
    process : FactorizedCTMC
        The forward chain (small enough to enumerate its states).
    t, t_next : float
        The step's times, t > t_next.
    """
    states = process.states()
    probs = step_probabilities(method, ratio, states, t, t_next, process)  # (M, L, S)
    L = process.L
    # P[x, y] = prod_l probs[x, l, y^l]
    per = probs[:, torch.arange(L)[:, None], states.T]  # (M, L, M)
    return per.prod(1).T


def output_law(method: str, ratio, process: FactorizedCTMC, times, start) -> torch.Tensor:
    r"""The exact law of the output of :func:`euler` (``"euler"``), :func:`tau_leaping` (``"tau"``) or
    :func:`tweedie` (``"tweedie"``) started from the law ``start`` on ``process.states()``, shape (S^L,).

    The product of the one-step matrices (:func:`step_matrix`): the discretisation error without Monte Carlo error.

    Parameters
    ----------
    method : {"euler", "tau", "tweedie"}
        The step rule.
    ratio : callable
        The ratio function ``ratio(x, t) -> (n, L, S)``.
    process : FactorizedCTMC
        The forward chain (small enough to enumerate its states).
    times : array_like
        The sampler's grid, strictly decreasing, > 0.
    start : array_like
        The law of the start on ``process.states()``, shape (S^L,) (e.g. ``process.marginal(p0, T)``).
    """
    process = _check_process(process)
    times = _check_times(times)
    law = _law(start, process.S ** process.L, "start")
    for k in range(times.numel() - 1):
        law = step_matrix(method, ratio, process, float(times[k]), float(times[k + 1])) @ law
    return law


def empirical_law(x, process: FactorizedCTMC) -> torch.Tensor:
    """The empirical law of the rows of ``x`` on ``process.states()``, shape (S^L,).

    Parameters
    ----------
    x : torch.Tensor
        Integer tokens, shape (n, L).
    process : FactorizedCTMC
        The forward chain (gives the states).
    """
    idx = process.index(x)
    return torch.bincount(idx, minlength=process.S ** process.L).double() / idx.numel()


def tv(p, q) -> float:
    """Total variation distance :math:`\\tfrac12\\sum|p - q|` between two laws on the same states.

    Parameters
    ----------
    p, q : array_like
        The two laws, of the same shape.
    """
    p, q = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    if p.shape != q.shape:
        raise ValueError(f"the two laws must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    return 0.5 * float((p - q).abs().sum())


def expected_tv_floor(p, n: int) -> float:
    r"""The mean TV between the empirical law of n exact draws from p and p: the Monte Carlo floor.

    :math:`\tfrac1{2n}\sum_i \mathbb E|N_i - np_i|` with :math:`N_i \sim \mathrm{Bin}(n, p_i)` (exact sum over the
    binomial law).

    Parameters
    ----------
    p : array_like
        The law.
    n : int
        The number of draws, at least 1.
    """
    import scipy.stats

    p = np.asarray(torch.as_tensor(p, dtype=torch.float64))
    n = _checks.positive_int(n, "n")
    k = np.arange(n + 1)
    total = 0.0
    for pi in p[p > 0]:
        total += float(np.sum(scipy.stats.binom.pmf(k, n, pi) * np.abs(k - n * pi)))
    return total / (2 * n)


def chi_square_pvalue(x, law, process: FactorizedCTMC, min_expected: float = 5.0) -> float:
    """Pearson's chi-square test of the sample ``x`` against ``law`` on ``process.states()``: the p-value.

    Cells with an expected count below ``min_expected`` are pooled into one (the usual validity rule);
    :func:`scipy.stats.chisquare` does the rest.  A sample that really has the law gives a p-value uniform on (0, 1).

    Parameters
    ----------
    x : torch.Tensor
        The sample, integer tokens (n, L).
    law : array_like
        The law on ``process.states()``, shape (S^L,).
    process : FactorizedCTMC
        The forward chain (gives the states).
    min_expected : float
        Cells expected to hold fewer draws are pooled.
    """
    import scipy.stats

    law = _law(law, process.S ** process.L, "law").numpy()
    counts = torch.bincount(process.index(x), minlength=law.size).numpy().astype(float)
    expected = law * counts.sum()
    big = expected >= min_expected
    obs, exp = list(counts[big]), list(expected[big])
    if expected[~big].sum() > 0:
        obs.append(counts[~big].sum())
        exp.append(expected[~big].sum())
    if counts[expected == 0].sum() > 0:
        return 0.0  # a draw where the law has no mass
    return float(scipy.stats.chisquare(obs, exp).pvalue)


# -- learning the ratios -------------------------------------------------------------------------------------------
def denoising_targets(x0, xt, t, process: FactorizedCTMC) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Targets and weights of the denoising ratio losses, each (n, L, S).

    Target :math:`\tilde r_{l,a} = K_t(a\mid x_0^l)/K_t(x_t^l\mid x_0^l)`, whose conditional mean given
    :math:`x_t` is the true ratio :math:`p_t(x_t^{l\leftarrow a})/p_t(x_t)`; weight :math:`w_{l,a} =
    [Q]_{x_t^l a}` (the forward rate from a into :math:`x_t^l`, 0 at :math:`a = x_t^l`): only the ratios that enter
    the reverse rates are learned :cite:p:`lou2024discrete`.

    Parameters
    ----------
    x0 : torch.Tensor
        Clean data tokens, shape (n, L).
    xt : torch.Tensor
        Their noised tokens at time t (e.g. :meth:`FactorizedCTMC.perturb`), shape (n, L).
    t : float or torch.Tensor
        One time > 0, or one per row (n,).
    process : FactorizedCTMC
        The forward chain.
    """
    x0 = process.check_tokens(x0, "x0", data=True)
    xt = process.check_tokens(xt, "xt")
    n = x0.shape[0]
    t = _row_times(t, n)
    K = process.transition(t)  # (n, S, S)
    cols = torch.gather(K, 2, x0[:, None, :].expand(n, process.S, process.L)).transpose(1, 2)  # K(. | x0^l)
    target = cols / cols.gather(2, xt[:, :, None])
    weight = process.Q[xt].scatter(2, xt[:, :, None], 0.0)
    return target, weight


def score_entropy(log_s, target, weight) -> torch.Tensor:
    r"""The score entropy :math:`\sum_{l,a} w_{l,a}\big(s_{l,a} - r_{l,a}\log s_{l,a} + r_{l,a}(\log r_{l,a} -
    1)\big)`, one value per row :cite:p:`lou2024discrete`.

    Each term is a Bregman divergence of :math:`-\log`-type between s and r: non-negative, zero exactly at
    :math:`s = r`; with the denoising targets (:func:`denoising_targets`) its expectation differs from the
    expectation with the true ratios by a constant, so it is minimised by the true ratios.

    Parameters
    ----------
    log_s : torch.Tensor
        The model's log-ratios :math:`\log s`, shape (n, L, S).
    target : torch.Tensor
        The targets r (>= 0), shape (n, L, S).
    weight : torch.Tensor
        The weights w, shape (n, L, S).
    """
    s = torch.exp(log_s)
    return (weight * (s - target * log_s + torch.special.xlogy(target, target) - target)).sum((1, 2))


def _draw_times(n, t_min, T, gen, like):
    t_min, T = float(t_min), float(T)
    if not (math.isfinite(T) and 0 < t_min < T):
        raise ValueError(f"need 0 < t_min < T, got t_min = {t_min:g}, T = {T:g}")
    return t_min + (T - t_min) * torch.rand(n, generator=gen, dtype=torch.float64)


def _prepare(x0, process, t_min, T, generator):
    process = _check_process(process)
    x0 = process.check_tokens(x0, "x0", data=True)
    gen = _checks.generator(generator)
    t = _draw_times(x0.shape[0], t_min, T, gen, None)
    xt = process.perturb(x0, t, gen)
    return process, x0, xt, t


def _check_model_output(out, shape, name):
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        raise ValueError(f"{name} must return a tensor of shape {shape}, got {getattr(out, 'shape', type(out))}")
    return out


def _ratio_loss_terms(log_ratio, x0, process, t_min, T, generator):
    """The model's log-ratios at a batch's noised points and the denoising targets and weights, (n, L, S) each."""
    process, x0, xt, t = _prepare(x0, process, t_min, T, generator)
    log_s = _check_model_output(log_ratio(xt, t), (x0.shape[0], process.L, process.S), "log_ratio(x, t)")
    target, weight = denoising_targets(x0, xt, t, process)
    return log_s, target.to(log_s), weight.to(log_s)


def concrete_score_matching_loss(log_ratio, x0, process: FactorizedCTMC, *, t_min: float, T: float,
                                 generator=None) -> torch.Tensor:
    r"""Denoising concrete score matching, the quadratic loss of :cite:t:`meng2022concrete`, for a batch.

    :math:`\mathbb E_{t, x_0, x_t}\sum_{l,a} w_{l,a}\,(s_\theta(x_t, t)_{l,a} - \tilde r_{l,a})^2` with
    :math:`t \sim U(t_{\min}, T)`, targets and weights from :func:`denoising_targets`, :math:`s_\theta =
    \exp(\text{log\_ratio})`.  By the tower property it equals :math:`\mathbb E\sum w\,(s_\theta - r_t)^2` plus a
    constant: minimised by the true ratios, but dominated by the largest ones.

    Parameters
    ----------
    log_ratio : callable
        ``log_ratio(x, t) -> (n, L, S)``, the model's log-ratios (a :class:`RatioNet` with
        ``output="log_ratio"``).
    x0 : torch.Tensor
        A batch of clean data tokens, shape (n, L).
    process : FactorizedCTMC
        The forward chain.
    t_min, T : float
        The times are drawn uniformly on (t_min, T), 0 < t_min < T.
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the times and of the forward noise.
    """
    log_s, target, weight = _ratio_loss_terms(log_ratio, x0, process, t_min, T, generator)
    return (weight * (torch.exp(log_s) - target) ** 2).sum((1, 2)).mean()


def score_entropy_loss(log_ratio, x0, process: FactorizedCTMC, *, t_min: float, T: float,
                       generator=None) -> torch.Tensor:
    r"""Denoising score entropy of SEDD :cite:p:`lou2024discrete` for a batch: the mean of :func:`score_entropy`
    with the denoising targets, :math:`t \sim U(t_{\min}, T)`.

    Parameters
    ----------
    log_ratio, x0, process, t_min, T, generator
        As in :func:`concrete_score_matching_loss`.
    """
    log_s, target, weight = _ratio_loss_terms(log_ratio, x0, process, t_min, T, generator)
    return score_entropy(log_s, target, weight).mean()


def masked_diffusion_loss(denoiser_logits, x0, process: FactorizedCTMC, *, t_min: float, T: float,
                          generator=None) -> torch.Tensor:
    r"""The masked-diffusion cross-entropy of MDLM :cite:p:`sahoo2024simple` (absorbing kernel only).

    With :math:`\alpha_t = e^{-\beta t}` the probability that a token is still unmasked,

    .. math:: \mathbb E_{t, x_0, x_t}\Big[\frac{-\alpha_t'}{1 - \alpha_t}\sum_{l:\,x_t^l = m}
        -\log \mu_\theta(x_t, t)_{l, x_0^l}\Big], \qquad \frac{-\alpha_t'}{1-\alpha_t} =
        \frac{\beta e^{-\beta t}}{1 - e^{-\beta t}},

    :math:`\mu_\theta` the softmax of ``denoiser_logits(x_t, t)`` (n, L, n_data), the network's guess of the clean
    token.  The ratios follow from it: :math:`r_{l,a} = \frac{\alpha_t}{1-\alpha_t}\mu_\theta(x_t, t)_{l,a}` at a
    masked position (:class:`RatioNet` with ``output="denoiser"``).

    Parameters
    ----------
    denoiser_logits : callable
        ``denoiser_logits(x, t) -> (n, L, n_data)``, the logits of the clean token (a :class:`RatioNet`
        with ``output="denoiser"``).
    x0, process, t_min, T, generator
        As in :func:`concrete_score_matching_loss` (the absorbing kernel only).
    """
    if _check_process(process).kind != "absorbing":
        raise ValueError("the masked-diffusion loss needs the absorbing kernel")
    process, x0, xt, t = _prepare(x0, process, t_min, T, generator)
    logits = _check_model_output(denoiser_logits(xt, t), (x0.shape[0], process.L, process.n_data),
                                 "denoiser_logits(x, t)")
    logp = torch.log_softmax(logits, 2).gather(2, x0[:, :, None])[:, :, 0]
    masked = (xt == process.mask).to(logp)
    w = (process.rate * torch.exp(-process.rate * t) / -torch.expm1(-process.rate * t)).to(logp)
    return (w * (-(logp * masked).sum(1))).mean()


class RatioNet(nn.Module):
    r"""A small network over short sequences: log-ratios (``output="log_ratio"``) or a denoiser's logits.

    Input: the one-hot tokens (L S numbers) and two time features :math:`e^{-\beta t}` and
    :math:`\log(1 - e^{-\beta t})`; ``depth`` hidden layers of width ``hidden`` (SiLU).  With ``"log_ratio"`` the
    output is :math:`\log s_\theta(x, t)` (n, L, S); for the absorbing kernel the known factor
    :math:`\log\frac{e^{-\beta t}}{1-e^{-\beta t}}` is added, so the network learns a log-posterior, as SEDD's
    parameterisation does :cite:p:`lou2024discrete`.  With ``"denoiser"`` (absorbing only) the output is the logits of
    :math:`P(x_0^l = \cdot \mid x_t)` (n, L, n_data), trained by :func:`masked_diffusion_loss`.
    :meth:`ratio` turns either into the module's ratio protocol.  The weights are drawn from ``generator``.

    Parameters
    ----------
    process : FactorizedCTMC
        The forward chain (a named kernel: its rate gives the time features).
    hidden, depth : int
        Width and number of hidden layers.
    output : {"log_ratio", "denoiser"}
        What the network predicts.
    generator : None, int, torch.Generator or numpy Generator
        Source of the initial weights.
    """

    def __init__(self, process: FactorizedCTMC, hidden: int = 64, depth: int = 2, output: str = "log_ratio",
                 generator=None):
        super().__init__()
        self.process = _check_process(process)
        if process.rate is None:
            raise ValueError("RatioNet needs a uniform or absorbing kernel (its rate sets the time features)")
        if output not in ("log_ratio", "denoiser"):
            raise ValueError(f"output must be 'log_ratio' or 'denoiser', got {output!r}")
        if output == "denoiser" and process.kind != "absorbing":
            raise ValueError("output='denoiser' needs the absorbing kernel")
        hidden = _checks.positive_int(hidden, "hidden")
        depth = _checks.positive_int(depth, "depth")
        self.output = output
        n_out = process.L * (process.S if output == "log_ratio" else process.n_data)
        layers: list[nn.Module] = []
        width = process.L * process.S + 2
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)
        gen = _checks.generator(generator)
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    b = 1 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-b, b, generator=gen)
                    layer.bias.uniform_(-b, b, generator=gen)

    def _features(self, x, t):
        pr = self.process
        x = pr.check_tokens(x)
        n = x.shape[0]
        t = _row_times(t, n)
        dtype = self.net[0].weight.dtype
        e = torch.exp(-pr.rate * t)
        feats = torch.stack([e, torch.log(-torch.expm1(-pr.rate * t))], 1)
        onehot = nn.functional.one_hot(x, pr.S).reshape(n, -1)
        return x, t, torch.cat([onehot.to(dtype), feats.to(dtype)], 1)

    def forward(self, x, t) -> torch.Tensor:
        """Log-ratios (n, L, S) or denoiser logits (n, L, n_data), by ``output``.

        Parameters
        ----------
        x : torch.Tensor
            Integer tokens, shape (n, L).
        t : float or torch.Tensor
            One time > 0, or one per row (n,).
        """
        pr = self.process
        x, t, z = self._features(x, t)
        out = self.net(z)
        if self.output == "denoiser":
            return out.reshape(-1, pr.L, pr.n_data)
        out = out.reshape(-1, pr.L, pr.S)
        if pr.kind == "absorbing":
            out = out + (-pr.rate * t - torch.log(-torch.expm1(-pr.rate * t))).to(out)[:, None, None]
        return out.scatter(2, x[:, :, None], 0.0)

    def ratio(self, x, t) -> torch.Tensor:
        """The ratio protocol (n, L, S), float64; for a denoiser :math:`r = \\frac{\\alpha}{1-\\alpha}\\mu_\\theta`
        at masked positions, 0 elsewhere (those ratios never enter the reverse rates).

        Parameters
        ----------
        x, t
            As in :meth:`forward`.
        """
        pr = self.process
        with torch.no_grad():
            out = self.forward(x, t).to(torch.float64)
            x = x.long()
            if self.output == "log_ratio":
                return torch.exp(out)
            t = _row_times(t, x.shape[0])
            odds = torch.exp(-pr.rate * t) / -torch.expm1(-pr.rate * t)
            mu = torch.softmax(out, 2) * odds[:, None, None]
            r = torch.zeros(x.shape[0], pr.L, pr.S, dtype=torch.float64)
            r[:, :, :pr.n_data] = mu * (x == pr.mask)[:, :, None]
            return r.scatter(2, x[:, :, None], 1.0)


def fit_ratios(model: RatioNet, loss: str, data, *, steps: int, batch_size: int = 256, lr: float = 3e-3,
               t_min: float = 1e-3, T: float = 4.0, generator=None, progress: bool = False) -> list[float]:
    """Train ``model`` with Adam on ``loss`` (``"csm"``, ``"score_entropy"`` or ``"mdlm"``); returns the losses.

    Each step draws a batch of data sequences (with replacement), times :math:`t \\sim U(t_{\\min}, T)` and the
    forward noise from ``generator``; the learning rate decays linearly to zero.  ``"mdlm"`` needs a denoiser
    network, the other two a log-ratio network.

    Parameters
    ----------
    model : RatioNet
        The network, trained in place.
    loss : {"csm", "score_entropy", "mdlm"}
        :func:`concrete_score_matching_loss`, :func:`score_entropy_loss` or :func:`masked_diffusion_loss`.
    data : torch.Tensor
        The training sequences, data tokens (N, L).
    steps : int
        Number of Adam steps, at least 1.
    batch_size : int
        Sequences per step, at least 1.
    lr : float
        Adam's initial learning rate.
    t_min, T : float
        The range of the loss's times (as in the losses).
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the batches, the times and the forward noise.
    progress : bool
        Show a progress bar.
    """
    if not isinstance(model, RatioNet):
        raise TypeError(f"model must be a RatioNet, got {type(model).__name__}")
    fns = {"csm": concrete_score_matching_loss, "score_entropy": score_entropy_loss,
           "mdlm": masked_diffusion_loss}
    if loss not in fns:
        raise ValueError(f"loss must be one of {sorted(fns)}, got {loss!r}")
    if (loss == "mdlm") != (model.output == "denoiser"):
        raise ValueError("loss 'mdlm' goes with output='denoiser', 'csm' and 'score_entropy' with 'log_ratio'")
    data = model.process.check_tokens(data, "data", data=True)
    steps = _checks.positive_int(steps, "steps")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    gen = _checks.generator(generator)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    history = []
    for _ in tqdm(range(steps), disable=not progress, desc=f"fit ({loss})", leave=False):
        idx = torch.randint(data.shape[0], (batch_size,), generator=gen)
        value = fns[loss](model, data[idx], model.process, t_min=t_min, T=T, generator=gen)
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
        history.append(float(value.detach()))
    return history
