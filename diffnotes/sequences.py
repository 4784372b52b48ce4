r"""Protein-like sequences: a Potts model of "naturalness", properties, and guided discrete diffusion.

Protein design asks for sequences that are *natural* (likely under the law of a protein family) and have a
*property* (a charge, a motif, a binding site): samples of :math:`P(w \mid f(w) \in E)` for a property f and a set
E of wanted values.  Review Section 3.3 (life science) and the book chapter *Diffusion for life science* (Part 1)
make the smallest faithful version: sequences of length L over an alphabet of S letters, few enough
(:math:`S^L`) to enumerate, so every law below is exact.

**Naturalness.**  The family's law is a Potts model, the model of direct coupling analysis of protein families
:cite:p:`weigt2009identification,morcos2011direct`,

.. math::

    p(w) = \frac1Z\exp\Big(\sum_{l} h_l(w^l) + \sum_{l < m} J_{lm}(w^l, w^m)\Big),

with fields :math:`h` and couplings :math:`J`; :class:`PottsModel` computes :math:`Z` by enumeration, so its
log-likelihood (the *naturalness* of a sequence) and its law on all sequences are exact, and it has a Gibbs sampler
(heat-bath sweeps) to test against.

**Guidance.**  With the discrete diffusion of :mod:`diffnotes.discrete` (a factorised CTMC; the analogue of the
score is the ratio :math:`p_t(x^{l\leftarrow a})/p_t(x)`), conditioning on the event :math:`\{f(X_0) \in E\}` is
Bayes' rule at every time: :math:`p_t(x \mid E) = p_t(x)\,c_t(x)/P(E)` with :math:`c_t(x) = P(f(X_0) \in E \mid X_t =
x)`, so the conditional ratios are the unconditional ones times a ratio of classifiers,

.. math::

    \frac{p_t(x^{l\leftarrow a}\mid E)}{p_t(x \mid E)} = \frac{p_t(x^{l\leftarrow a})}{p_t(x)}\;
    \Big(\frac{c_t(x^{l\leftarrow a})}{c_t(x)}\Big)^{\gamma}, \qquad \gamma = 1,

the discrete classifier guidance of :cite:t:`nisonoff2024unlocking` (with a strength :math:`\gamma`, the
counterpart of :math:`1 + \eta` in :mod:`diffnotes.guidance`).  :func:`classifier_guided_ratios` builds it from any
ratio function and any log-classifier; :func:`exact_log_classifier` is the exact :math:`\log c_t` by enumeration,
and :class:`NoisyPropertyClassifier` learns it from noised data (:func:`property_classifier_loss`), as a designer
would do with a property predictor.  With exact ratios the guided chain can also be built directly from the
enumerated conditional law: ``ExactRatios(process, conditional_law(p, mask))``.

Sequences are long tensors of tokens (n, L) in the lexicographic order of
:meth:`diffnotes.discrete.FactorizedCTMC.data_states`; :meth:`PottsModel.encode` and :meth:`PottsModel.decode`
translate strings.  Review: Section 3.3 :cite:p:`chen2024opportunities`; protein design with discrete diffusion and
guidance :cite:p:`gruver2023protein,watson2023novo`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from . import _checks
from .discrete import FactorizedCTMC, _positive_times
from .networks import _mlp, seeded

__all__ = [
    "PottsModel",
    "motif_count",
    "letter_count",
    "property_mask",
    "conditional_law",
    "rejection_sample",
    "exact_log_classifier",
    "classifier_guided_ratios",
    "NoisyPropertyClassifier",
    "property_classifier_loss",
]


def _check_alphabet(alphabet) -> str:
    if not isinstance(alphabet, str):
        raise TypeError(f"alphabet must be a string of distinct letters, got {type(alphabet).__name__}")
    if len(alphabet) < 2 or len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet must have at least 2 distinct letters, got {alphabet!r}")
    return alphabet


class PottsModel:
    r"""A Potts model on sequences of length L over an alphabet of S letters, with its exact law by enumeration.

    :math:`\log p(w) = \sum_l h_l(w^l) + \sum_{l<m} J_{lm}(w^l, w^m) - \log Z`, :math:`Z` summed over all
    :math:`S^L` sequences (module docstring; :cite:p:`weigt2009identification`).

    Parameters
    ----------
    fields : array_like
        :math:`h`, shape (L, S).
    couplings : array_like
        :math:`J`, shape (L, L, S, S), with :math:`J_{lm}(a, b) = J_{ml}(b, a)` and zero blocks :math:`J_{ll}`.
    alphabet : str
        The S letters (for :meth:`encode` / :meth:`decode`).
    """

    max_states = 2**20

    def __init__(self, fields, couplings, alphabet: str):
        self.alphabet = _check_alphabet(alphabet)
        h = torch.as_tensor(np.asarray(fields, dtype=np.float64))
        J = torch.as_tensor(np.asarray(couplings, dtype=np.float64))
        if h.ndim != 2 or h.shape[1] != len(alphabet):
            raise ValueError(f"fields must have shape (L, {len(alphabet)}), got {tuple(h.shape)}")
        L, S = h.shape
        if J.shape != (L, L, S, S):
            raise ValueError(f"couplings must have shape ({L}, {L}, {S}, {S}), got {tuple(J.shape)}")
        if not (torch.all(torch.isfinite(h)) and torch.all(torch.isfinite(J))):
            raise ValueError("fields and couplings must be finite")
        if not torch.allclose(J, J.permute(1, 0, 3, 2), atol=1e-12, rtol=0):
            raise ValueError("couplings must be symmetric: J[l, m, a, b] = J[m, l, b, a]")
        if torch.any(J[torch.arange(L), torch.arange(L)] != 0):
            raise ValueError("the diagonal blocks J[l, l] must be zero")
        if S**L > self.max_states:
            raise ValueError(f"S^L = {S}^{L} sequences are too many to enumerate (at most {self.max_states})")
        self.fields, self.couplings, self.L, self.S = h, J, int(L), int(S)
        self._states = torch.cartesian_prod(*[torch.arange(S)] * L).reshape(-1, L)
        logits = self.unnormalized_log_prob(self._states)
        self.log_z = float(torch.logsumexp(logits, 0))
        self._law = torch.exp(logits - self.log_z)

    @classmethod
    def random(cls, length: int, alphabet: str, *, field_scale: float = 1.0, coupling_scale: float = 0.5,
               generator=None) -> PottsModel:
        """Fields and couplings with independent normal entries of the given scales (couplings symmetrised).

        Parameters
        ----------
        length : int
            L, at least 2.
        alphabet : str
            The S letters.
        field_scale, coupling_scale : float
            Standard deviations of the fields and of the couplings.
        generator : None, int, torch.Generator or numpy Generator
            Source of randomness.
        """
        alphabet = _check_alphabet(alphabet)
        L = _checks.positive_int(length, "length", 2)
        S = len(alphabet)
        gen = _checks.generator(generator)
        h = field_scale * torch.randn(L, S, generator=gen, dtype=torch.float64)
        J = coupling_scale * torch.randn(L, L, S, S, generator=gen, dtype=torch.float64)
        J = torch.triu(torch.ones(L, L, dtype=torch.float64), 1)[:, :, None, None] * J
        return cls(h, J + J.permute(1, 0, 3, 2), alphabet)

    def __repr__(self) -> str:
        return f"PottsModel(L={self.L}, alphabet={self.alphabet!r})"

    # -- sequences and strings ------------------------------------------------------------------------------
    def check_tokens(self, x, name: str = "x") -> torch.Tensor:
        """An integer tensor (n, L) of tokens in {0, ..., S-1}, as long (clear errors otherwise).

        Parameters
        ----------
        x : torch.Tensor
            Tokens, a long tensor (n, L).
        name : str
            The argument's name, for the messages.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor of tokens (n, {self.L}); use encode() for strings")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of tokens, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self.L:
            raise ValueError(f"{name} must have shape (n, {self.L}), got {tuple(x.shape)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.S):
            raise ValueError(f"{name} has tokens outside the alphabet {{0, ..., {self.S - 1}}} "
                             f"({self.alphabet!r})")
        return x.long()

    def encode(self, sequences) -> torch.Tensor:
        """Strings (one or a list) of length L over the alphabet as tokens (n, L); other letters raise.

        Parameters
        ----------
        sequences : str or list of str
            Strings of length L over the alphabet.
        """
        if isinstance(sequences, str):
            sequences = [sequences]
        rows = []
        for w in sequences:
            if not isinstance(w, str):
                raise TypeError(f"sequences must be strings, got {type(w).__name__}")
            if len(w) != self.L:
                raise ValueError(f"sequence {w!r} has length {len(w)}, expected {self.L}")
            bad = sorted(set(w) - set(self.alphabet))
            if bad:
                raise ValueError(f"sequence {w!r} has letters {bad} outside the alphabet {self.alphabet!r}")
            rows.append([self.alphabet.index(c) for c in w])
        return torch.tensor(rows, dtype=torch.long).reshape(-1, self.L)

    def decode(self, x) -> list[str]:
        """Tokens (n, L) as strings.

        Parameters
        ----------
        x : torch.Tensor
            Tokens, a long tensor (n, L).
        """
        x = self.check_tokens(x)
        return ["".join(self.alphabet[int(a)] for a in row) for row in x]

    def states(self) -> torch.Tensor:
        """All :math:`S^L` sequences, lexicographic (the order of ``FactorizedCTMC.data_states()``)."""
        return self._states.clone()

    def index(self, x) -> torch.Tensor:
        """The position of each row of ``x`` in :meth:`states`.

        Parameters
        ----------
        x : torch.Tensor
            Tokens, a long tensor (n, L).
        """
        x = self.check_tokens(x)
        return (x * self.S ** torch.arange(self.L - 1, -1, -1)).sum(1)

    # -- the law -------------------------------------------------------------------------------------------
    def unnormalized_log_prob(self, x) -> torch.Tensor:
        r""":math:`\sum_l h_l(w^l) + \sum_{l<m} J_{lm}(w^l, w^m)` for each row, shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Tokens, a long tensor (n, L).
        """
        x = self.check_tokens(x)
        L = self.L
        field = self.fields[torch.arange(L), x].sum(1)
        pair = self.couplings[torch.arange(L)[:, None], torch.arange(L)[None, :], x[:, :, None], x[:, None, :]]
        return field + 0.5 * pair.sum((1, 2))

    def log_prob(self, x) -> torch.Tensor:
        """The exact log-likelihood (naturalness) :math:`\\log p(w)` of each row, shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Tokens, a long tensor (n, L).
        """
        return self.unnormalized_log_prob(x) - self.log_z

    def law(self) -> torch.Tensor:
        """The exact law on :meth:`states`, shape (S^L,), summing to one."""
        return self._law.clone()

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """``n`` exact draws (n, L) from the enumerated law.

        Parameters
        ----------
        n : int
            Number of draws.
        generator : None, int, torch.Generator or numpy Generator
            Source of randomness.
        """
        n = _checks.positive_int(n, "n")
        idx = torch.multinomial(self._law, n, replacement=True, generator=_checks.generator(generator))
        return self._states[idx]

    def gibbs(self, n_chains: int, n_sweeps: int, *, start=None, generator=None) -> torch.Tensor:
        r"""Heat-bath Gibbs sampling: ``n_sweeps`` sweeps over the positions of ``n_chains`` parallel chains.

        Position l is redrawn from :math:`p(w^l = a \mid w^{-l}) \propto \exp(h_l(a) + \sum_{m \ne l}
        J_{lm}(a, w^m))`; the chain is reversible with respect to p, so the final states are draws of p up to the
        mixing error.  ``start`` (n_chains, L) defaults to uniform tokens.  Returns the final states (n_chains, L).

        Parameters
        ----------
        n_chains : int
            Number of parallel chains.
        n_sweeps : int
            Sweeps over all positions.
        start : torch.Tensor, optional
            Initial tokens (n_chains, L); uniform tokens by default.
        generator : None, int, torch.Generator or numpy Generator
            Source of randomness.
        """
        n = _checks.positive_int(n_chains, "n_chains")
        sweeps = _checks.positive_int(n_sweeps, "n_sweeps")
        gen = _checks.generator(generator)
        if start is None:
            x = torch.randint(self.S, (n, self.L), generator=gen)
        else:
            x = self.check_tokens(start, "start").clone()
            if x.shape[0] != n:
                raise ValueError(f"start must have {n} rows, got {x.shape[0]}")
        rows = torch.arange(n)
        for _ in range(sweeps):
            for pos in range(self.L):
                # J[pos, m, a, x^m] summed over m (J[pos, pos] = 0)
                logits = self.fields[pos][None, :] + self.couplings[pos][torch.arange(self.L)[None, :], :,
                                                                          x].sum(1)
                probs = torch.softmax(logits, 1)
                cdf = torch.cumsum(probs, 1)
                u = torch.rand(n, 1, generator=gen, dtype=torch.float64)
                x[rows, pos] = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(self.S - 1)[:, 0]
        return x


# -- properties ------------------------------------------------------------------------------------------------
def _tokens(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dtype == torch.bool or x.ndim != 2:
        raise TypeError("x must be an integer tensor of tokens of shape (n, L)")
    return x.long()


def motif_count(x, motif) -> torch.Tensor:
    """The number of (possibly overlapping) occurrences of the token pattern ``motif`` in each row, shape (n,).

    Parameters
    ----------
    x : torch.Tensor
        Tokens, a long tensor (n, L).
    motif : sequence of int
        The token pattern, 1 to L tokens.
    """
    x = _tokens(x)
    motif = torch.as_tensor(list(motif), dtype=torch.long)
    k = motif.numel()
    if k < 1 or k > x.shape[1]:
        raise ValueError(f"motif must have between 1 and L = {x.shape[1]} tokens, got {k}")
    windows = x.unfold(1, k, 1)  # (n, L - k + 1, k)
    return (windows == motif).all(2).sum(1)


def letter_count(x, tokens) -> torch.Tensor:
    """The number of positions of each row holding one of ``tokens`` (a composition), shape (n,).

    Parameters
    ----------
    x : torch.Tensor
        Tokens, a long tensor (n, L).
    tokens : sequence of int
        The tokens counted.
    """
    x = _tokens(x)
    tokens = torch.as_tensor(list(tokens), dtype=torch.long)
    if tokens.numel() < 1:
        raise ValueError("tokens must name at least one token")
    return torch.isin(x, tokens).sum(1)


def property_mask(values, E: Iterable) -> torch.Tensor:
    r"""The indicator :math:`f(w) \in E` from property values (n,) and a set E of wanted values; E empty raises.

    Parameters
    ----------
    values : array_like
        Property values f(w), shape (n,).
    E : iterable
        The wanted values; must not be empty.
    """
    try:
        wanted = sorted(set(E))
    except TypeError as err:
        raise TypeError(f"E must be an iterable of property values, got {type(E).__name__}") from err
    if not wanted:
        raise ValueError("the property set E is empty: no sequence can satisfy f(w) in E")
    values = torch.as_tensor(values)
    return torch.isin(values, torch.as_tensor(wanted, dtype=values.dtype))


def conditional_law(law, mask) -> torch.Tensor:
    r"""The conditional law :math:`p(w \mid w \in E) = p(w)\mathbf 1_E(w)/P(E)` on the same states.

    Raises ``ValueError`` when E is empty or has probability zero under ``law``.

    Parameters
    ----------
    law : array_like
        A law on the states, shape (M,).
    mask : array_like of bool
        The indicator of E on the same states, shape (M,).
    """
    p = torch.as_tensor(law, dtype=torch.float64).reshape(-1)
    mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
    if mask.shape != p.shape:
        raise ValueError(f"mask must have one entry per state ({p.numel()}), got {mask.numel()}")
    if not bool(mask.any()):
        raise ValueError("the property set E is empty: no state satisfies f(w) in E")
    mass = float(p[mask].sum())
    if not mass > 0:
        raise ValueError("the property set E has probability zero under the law: nothing to condition on")
    return torch.where(mask, p, 0.0) / mass


def rejection_sample(sample: Callable, accept: Callable, n: int, *, batch: int = 4096, max_draws: int = 10**8,
                     generator=None) -> tuple[torch.Tensor, int]:
    r"""Draw ``n`` samples of :math:`P(\cdot \mid \text{accept})` by rejection: the baseline to guidance.

    ``sample(m, generator)`` draws m proposals (m, L), ``accept(x)`` says which are kept (bool, (m,)).  Returns the
    first n accepted rows and the number of proposals drawn, about :math:`n / P(\text{accept})`.

    Parameters
    ----------
    sample : callable
        ``sample(m, generator)`` returns m proposals (m, L).
    accept : callable
        ``accept(x)`` returns a bool tensor (m,).
    n : int
        Number of accepted draws wanted.
    batch : int
        Proposals per round.
    max_draws : int
        Give up (RuntimeError) after this many proposals.
    generator : None, int, torch.Generator or numpy Generator
        Source of randomness.
    """
    n = _checks.positive_int(n, "n")
    batch = _checks.positive_int(batch, "batch")
    gen = _checks.generator(generator)
    kept, drawn, total = [], 0, 0
    while total < n:
        if drawn >= max_draws:
            raise RuntimeError(f"rejection sampling accepted {total} of {drawn} proposals; stopped at max_draws")
        x = sample(batch, gen)
        ok = torch.as_tensor(accept(x), dtype=torch.bool)
        # count the proposals up to the n-th acceptance only
        cum = torch.cumsum(ok.long(), 0)
        need = n - total
        if int(cum[-1]) >= need:
            last = int(torch.nonzero(cum == need)[0])
            kept.append(x[: last + 1][ok[: last + 1]])
            drawn += last + 1
            total = n
        else:
            kept.append(x[ok])
            drawn += x.shape[0]
            total += int(ok.sum())
    return torch.cat(kept), drawn


# -- guidance --------------------------------------------------------------------------------------------------
def exact_log_classifier(process: FactorizedCTMC, p_data, mask) -> Callable:
    r"""The exact :math:`\log c_t(x) = \log P(X_0 \in E \mid X_t = x)` by enumeration, a callable (x, t) -> (n,).

    :math:`c_t(x) = \sum_{x_0 \in E} p(x_0) K_t(x\mid x_0) / \sum_{x_0} p(x_0) K_t(x \mid x_0)` with the factorised
    kernel :math:`K_t(x\mid x_0) = \prod_l [e^{tQ}]_{x^l x_0^l}`; :math:`-\infty` where it is zero.

    Parameters
    ----------
    process : FactorizedCTMC
        The forward chain.
    p_data : array_like
        The data law on ``process.data_states()``.
    mask : array_like of bool
        The indicator of E on the same states.
    """
    if not isinstance(process, FactorizedCTMC):
        raise TypeError(f"process must be a FactorizedCTMC, got {type(process).__name__}")
    p_e = conditional_law(p_data, mask)
    p = torch.as_tensor(p_data, dtype=torch.float64).reshape(-1)
    log_pe = math.log(float(p[torch.as_tensor(mask, dtype=torch.bool).reshape(-1)].sum()))
    full = process.embed(p)
    full_e = process.embed(p_e)

    def log_classifier(x, t) -> torch.Tensor:
        x = process.check_tokens(x)
        t = _positive_times(t)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(-1)
        out = torch.empty(x.shape[0], dtype=torch.float64)
        for tu in torch.unique(t):
            rows = t == tu
            idx = process.index(x[rows])
            num = process.marginal(full_e, float(tu))[idx]
            den = process.marginal(full, float(tu))[idx]
            out[rows] = log_pe + torch.log(num) - torch.log(den)
        return out

    return log_classifier


def classifier_guided_ratios(ratio: Callable, log_classifier: Callable, strength: float = 1.0) -> Callable:
    r"""Discrete classifier guidance: :math:`r_t(x)_{l,a}\,\exp\big(\gamma[\log c_t(x^{l\leftarrow a}) - \log
    c_t(x)]\big)`.

    With the exact ratios and the exact classifier and :math:`\gamma = 1` these are the exact ratios of the
    conditional law :math:`p_t(\cdot \mid E)` (module docstring; :cite:p:`nisonoff2024unlocking`); :math:`\gamma
    > 1` sharpens towards E (the tempered law :math:`p_t c_t^\gamma`, not a diffused law).  The classifier is
    evaluated at the :math:`L S` neighbours of every row.

    Parameters
    ----------
    ratio : callable
        A ratio function ``ratio(x, t)`` -> (n, L, S) (:mod:`diffnotes.discrete`).
    log_classifier : callable
        ``log_classifier(x, t)`` -> (n,), the log-probability that the clean sequence is in E given x at time t.
    strength : float
        :math:`\gamma \ge 0`.
    """
    if not callable(ratio) or not callable(log_classifier):
        raise TypeError("ratio and log_classifier must be callables of (x, t)")
    gamma = float(strength)
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")

    def guided(x, t) -> torch.Tensor:
        r = ratio(x, t)
        n, L, S = r.shape
        t = torch.as_tensor(t, dtype=torch.float64)
        t_rows = t.expand(n) if t.ndim == 0 else t.reshape(-1)
        nb = x.long()[:, None, None, :].repeat(1, L, S, 1)  # nb[k, l, a] = x[k] with position l set to a
        nb[:, torch.arange(L), :, torch.arange(L)] = torch.arange(S)
        with torch.no_grad():
            here = torch.as_tensor(log_classifier(x, t_rows), dtype=torch.float64).reshape(n)
            there = torch.as_tensor(log_classifier(nb.reshape(-1, L), t_rows.repeat_interleave(L * S)),
                                    dtype=torch.float64).reshape(n, L, S)
        if not torch.all(torch.isfinite(here)):
            raise ValueError("log_classifier(x, t) is not finite at a current state (c_t(x) = 0): start the "
                             "guided chain where the event E is possible")
        log_w = gamma * (there - here[:, None, None])
        return (r.to(torch.float64) * torch.exp(log_w)).scatter(2, x[:, :, None].long(), 1.0)

    return guided


class NoisyPropertyClassifier(nn.Module):
    r"""A small network for :math:`\log P(f(X_0) \in E \mid X_t = x)`: one-hot tokens and two time features in,
    one logit out (an MLP, SiLU), the property predictor of classifier guidance.

    The time features are those of :class:`diffnotes.discrete.RatioNet`, :math:`e^{-\beta t}` and
    :math:`\log(1 - e^{-\beta t})`.  Train with :func:`property_classifier_loss`; calling the module gives the
    logit, :meth:`log_prob` the log-probability (the ``log_classifier`` of :func:`classifier_guided_ratios`).

    Parameters
    ----------
    process : FactorizedCTMC
        The forward chain (a uniform or absorbing kernel).
    hidden, depth : int
        Width and number of hidden layers.
    generator : None, int, torch.Generator or numpy Generator
        Source of the initial weights.
    """

    def __init__(self, process: FactorizedCTMC, hidden: int = 64, depth: int = 2, generator=None):
        super().__init__()
        if not isinstance(process, FactorizedCTMC) or process.rate is None:
            raise TypeError("process must be a FactorizedCTMC with a uniform or absorbing kernel")
        self.process = process
        with seeded(generator):
            self.net = _mlp(process.L * process.S + 2, _checks.positive_int(hidden, "hidden"),
                            _checks.positive_int(depth, "depth"), 1)

    def forward(self, x, t) -> torch.Tensor:
        """The logit of :math:`P(f(X_0) \\in E \\mid X_t = x)`, shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Tokens, a long tensor (n, L).
        t : float or torch.Tensor
            Time(s) > 0, a number or one per row.
        """
        pr = self.process
        x = pr.check_tokens(x)
        t = _positive_times(t)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(-1)
        feats = torch.stack([torch.exp(-pr.rate * t), torch.log(-torch.expm1(-pr.rate * t))], 1)
        z = torch.cat([nn.functional.one_hot(x, pr.S).reshape(x.shape[0], -1).double(), feats], 1)
        return self.net(z.to(self.net[0].weight))[:, 0]

    def log_prob(self, x, t) -> torch.Tensor:
        """:math:`\\log\\sigma(\\text{logit})`, shape (n,), float64.

        Parameters
        ----------
        x : torch.Tensor
            Tokens, a long tensor (n, L).
        t : float or torch.Tensor
            Time(s) > 0, a number or one per row.
        """
        return nn.functional.logsigmoid(self.forward(x, t)).double()


def property_classifier_loss(model: NoisyPropertyClassifier, x0, label, *, t_min: float = 1e-3, T: float = 4.0,
                             spacing: str = "uniform", generator=None) -> torch.Tensor:
    r"""Cross-entropy of the noisy property classifier on a batch: :math:`t \sim U(t_{\min}, T)` (or
    :math:`\log t` uniform, ``spacing="log"``, matching a log-spaced sampling grid), :math:`x_t \sim
    K_t(\cdot\mid x_0)`, label :math:`\mathbf 1[f(x_0) \in E]`.

    Its minimiser is :math:`c_t(x) = P(f(X_0) \in E \mid X_t = x)` at every t.  Fits
    :func:`diffnotes.training.train` (``loss_fn(model, x0, label, generator=...)``).

    Parameters
    ----------
    model : NoisyPropertyClassifier
        The classifier.
    x0 : torch.Tensor
        Clean data tokens (n, L).
    label : array_like
        The labels 1[f(x0) in E], shape (n,).
    t_min, T : float
        The range of the training times, 0 < t_min < T.
    spacing : {'uniform', 'log'}
        Law of the times: uniform in t or in log t.
    generator : None, int, torch.Generator or numpy Generator
        Source of randomness.
    """
    pr = model.process
    x0 = pr.check_tokens(x0, "x0", data=True)
    label = torch.as_tensor(label, dtype=torch.float64).reshape(-1)
    if label.shape[0] != x0.shape[0]:
        raise ValueError(f"label must have one entry per row of x0 ({x0.shape[0]}), got {label.shape[0]}")
    t_min, T = float(t_min), float(T)
    if not (math.isfinite(T) and 0 < t_min < T):
        raise ValueError(f"need 0 < t_min < T, got t_min = {t_min:g}, T = {T:g}")
    gen = _checks.generator(generator)
    u = torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)
    if spacing == "uniform":
        t = t_min + (T - t_min) * u
    elif spacing == "log":
        t = t_min * (T / t_min) ** u
    else:
        raise ValueError(f"spacing must be 'uniform' or 'log', got {spacing!r}")
    xt = pr.perturb(x0, t, gen)
    logits = model(xt, t)
    return nn.functional.binary_cross_entropy_with_logits(logits, label.to(logits))
