r"""Small score networks and the one adapter that turns any network output into a score function.

Section 4.1 of the review (book chapter *Learning the score*) fits a score :math:`s(x, t) \approx \nabla\log p_t(x)`
from a class :math:`\mathcal S` of neural networks (Remark 1: in practice a U-Net or transformer with a time
embedding; here, for 2-D and low-dimensional toys, a multilayer perceptron).  Section 5.1 (book chapter *Conditional
diffusion and guidance*) adds a label input with one extra *null* label :math:`\varnothing` so that one network
learns both the conditional and the unconditional score (classifier-free guidance).

Networks may predict the score itself or, as is usual in practice, the noise, the clean data or the velocity; with
:math:`x = \alpha x_0 + \sqrt h\,\varepsilon` (:math:`\alpha^2 + h = 1` for every VP process) the four are linked by

.. math::

    s = -\frac{\varepsilon}{\sqrt h} = \frac{\alpha x_0 - x}{h} = -x - \frac{\alpha}{\sqrt h}\,v,
    \qquad v = \alpha\varepsilon - \sqrt h\,x_0 .

:func:`as_score` applies this map once, so that samplers, losses and guidance only ever see the score protocol
``score(x, t)`` (or ``score(x, y, t)`` for conditional networks) and never special-case a parameterisation.

References: :cite:p:`ho2020denoising,song2021score,ho2022classifier`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .sde import VPSDE, ConstantVP, as_time

__all__ = [
    "SinusoidalEmbedding",
    "ScoreMLP",
    "ConditionalScoreMLP",
    "ScoreAdapter",
    "LabelledScore",
    "as_score",
    "with_label",
    "PREDICTIONS",
]

#: The quantities a network may predict, and what :func:`as_score` does with each.
PREDICTIONS = {
    "score": "s = output",
    "eps": "s = -eps / sqrt(h)",
    "x0": "s = (alpha x0 - x) / h",
    "v": "s = -x - alpha v / sqrt(h)",
}


# -- helpers ----------------------------------------------------------------------------------------------
def _param_like(module: nn.Module) -> torch.Tensor:
    """A tensor carrying the dtype and device of the module's parameters."""
    for p in module.parameters():
        return p
    return torch.empty(0)


def _check_x(x, dim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor of shape (n, D), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, D), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"x must have shape (n, {dim}), got {tuple(x.shape)}")
    return x


def _rows(t, n: int, like: torch.Tensor) -> torch.Tensor:
    """A time given as a float or a 0-d, (n,) or (n, 1) tensor, returned as an (n,) tensor typed like ``like``."""
    t = as_time(t, like=like)
    if t.ndim == 0:
        return t.expand(n)
    if t.ndim == 2 and t.shape == (n, 1):
        return t.reshape(n)
    if t.ndim == 1 and t.shape[0] == n:
        return t
    raise ValueError(f"t must be a number or have one entry per row (shape ({n},)), got shape {tuple(t.shape)}")


def _labels(y, n: int, device=None) -> torch.Tensor:
    """Integer labels given as an int, a 0-d or an (n,) tensor/array, returned as a long (n,) tensor."""
    if isinstance(y, bool):
        raise TypeError("a class label must be an integer, got a bool")
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"class labels must be integers, got dtype {y.dtype}")
    y = y.long()
    if y.ndim == 0:
        return y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"y must be one label or one label per row (shape ({n},)), got shape {tuple(y.shape)}")
    return y


# -- the time embedding -------------------------------------------------------------------------------------
class SinusoidalEmbedding(nn.Module):
    r"""Sinusoidal features of the (log-)time: :math:`u \mapsto (\sin\omega_j u, \cos\omega_j u)_{j\le m}`.

    With ``kind="log"`` (default) the embedded variable is :math:`u = \log t`, which spreads the early-stopping range
    :math:`t\in[10^{-3}, 10]` over a few units so that small and large times are told apart equally well; with
    ``kind="linear"``, :math:`u = t`.  The frequencies :math:`\omega_j` are fixed (not learned) and spaced
    geometrically between ``min_frequency`` and ``max_frequency``, as in the positional encodings of transformers
    used by DDPM's U-Net :cite:p:`ho2020denoising`.

    Parameters
    ----------
    n_features : int
        Output width, an even integer (``n_features / 2`` frequencies).
    kind : {"log", "linear"}
        Embed :math:`\log t` or :math:`t`.
    min_frequency, max_frequency : float
        The frequency range, ``0 < min_frequency <= max_frequency``.
    """

    def __init__(self, n_features: int = 32, kind: str = "log", min_frequency: float = 1 / 16,
                 max_frequency: float = 4.0):
        super().__init__()
        if isinstance(n_features, bool) or int(n_features) != n_features or n_features < 2 or n_features % 2:
            raise ValueError(f"n_features must be an even integer >= 2, got {n_features!r}")
        if kind not in ("log", "linear"):
            raise ValueError(f"kind must be 'log' or 'linear', got {kind!r}")
        if not 0 < min_frequency <= max_frequency < math.inf:
            raise ValueError(f"need 0 < min_frequency <= max_frequency < inf, got {min_frequency}, {max_frequency}")
        self.kind = kind
        self.n_features = int(n_features)
        freqs = torch.logspace(math.log10(min_frequency), math.log10(max_frequency), self.n_features // 2,
                               dtype=torch.float64)
        self.register_buffer("frequencies", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed an (n,) tensor of times; returns (n, n_features) in the dtype of ``t``."""
        if self.kind == "log":
            if torch.any(t <= 0):
                raise ValueError("a log-time embedding needs t > 0 (use an early-stopping time t0 > 0)")
            u = torch.log(t)
        else:
            u = t
        arg = u[:, None] * self.frequencies.to(t)[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def _mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _check_sizes(**sizes):
    for name, value in sizes.items():
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ScoreMLP(nn.Module):
    r"""A multilayer perceptron :math:`(x, t) \mapsto f_\theta(x, t) \in \mathbb R^D` with a time embedding.

    The input is the concatenation of :math:`x` and a :class:`SinusoidalEmbedding` of :math:`\log t` (or
    :math:`t`); ``depth`` hidden layers of width ``hidden`` with SiLU activations follow.  What the output means (the
    score, the noise, the clean data or the velocity) is decided by :func:`as_score`, which turns the network into a
    score function: e.g. ``as_score(ScoreMLP(2), "eps", sde)`` is the noise-prediction parameterisation
    :math:`s_\theta = -\varepsilon_\theta/\sqrt{h(t)}` of DDPM :cite:p:`ho2020denoising`.  It is a small instance
    of the network class :math:`\mathcal S` of the review, Section 4.1 (book chapter *Learning the score*).

    Computations use the dtype and device of the parameters (float32 by default; ``.double()`` for float64); inputs
    are cast to them and the output is returned in the dtype and on the device of ``x``.

    Parameters
    ----------
    dim : int
        Data dimension D.
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of hidden layers.
    time_embedding : {"log", "linear"}
        Embed :math:`\log t` (default) or :math:`t`.
    embedding_dim : int
        Width of the time embedding (even).
    """

    conditional = False

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_embedding: str = "log",
                 embedding_dim: int = 32):
        super().__init__()
        _check_sizes(dim=dim, hidden=hidden, depth=depth)
        self.dim = int(dim)
        self.embedding = SinusoidalEmbedding(embedding_dim, time_embedding)
        self.net = _mlp(self.dim + self.embedding.n_features, int(hidden), int(depth), self.dim)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """The network output for inputs x (n, D) and times t (a float or an (n,) tensor), shaped like x."""
        x = _check_x(x, self.dim)
        p = _param_like(self)
        xp = x.to(dtype=p.dtype, device=p.device)
        tp = _rows(t, x.shape[0], xp)
        out = self.net(torch.cat([xp, self.embedding(tp)], dim=1))
        return out.to(dtype=x.dtype, device=x.device)


class ConditionalScoreMLP(nn.Module):
    r"""A conditional network :math:`(x, y, t) \mapsto f_\theta(x, y, t)` with a learned class embedding.

    Labels are :math:`0, \dots, C-1` plus one extra *null* label :math:`\varnothing` with index :math:`C`
    (:attr:`null_label`): trained with label dropout (:func:`diffnotes.losses.conditional_dsm_loss`) the same network
    learns the conditional score :math:`\nabla\log p_t(x\mid y)` and, at :math:`y = \varnothing`, the unconditional
    score :math:`\nabla\log p_t(x)` -- the classifier-free guidance construction of Ho and Salimans
    :cite:p:`ho2022classifier` (review Section 5.1; book chapter *Conditional diffusion and guidance*).  Use
    :func:`as_score` (with ``conditional`` detected) to turn it into a conditional score function, and
    :func:`with_label` to fix a label.

    Parameters
    ----------
    dim : int
        Data dimension D.
    n_classes : int
        Number of classes C (the null label is C).
    hidden, depth, time_embedding, embedding_dim
        As in :class:`ScoreMLP`.
    class_embedding_dim : int
        Width of the learned class embedding.
    """

    conditional = True

    def __init__(self, dim: int, n_classes: int, hidden: int = 128, depth: int = 3, time_embedding: str = "log",
                 embedding_dim: int = 32, class_embedding_dim: int = 16):
        super().__init__()
        _check_sizes(dim=dim, n_classes=n_classes, hidden=hidden, depth=depth,
                     class_embedding_dim=class_embedding_dim)
        self.dim, self.n_classes = int(dim), int(n_classes)
        self.embedding = SinusoidalEmbedding(embedding_dim, time_embedding)
        self.class_embedding = nn.Embedding(self.n_classes + 1, int(class_embedding_dim))
        width = self.dim + self.embedding.n_features + int(class_embedding_dim)
        self.net = _mlp(width, int(hidden), int(depth), self.dim)

    @property
    def null_label(self) -> int:
        """The index of the null label, C."""
        return self.n_classes

    def forward(self, x: torch.Tensor, y, t) -> torch.Tensor:
        """The output for x (n, D), labels y (an int or (n,) ints in 0..C, C meaning null) and times t."""
        x = _check_x(x, self.dim)
        p = _param_like(self)
        y = _labels(y, x.shape[0], device=p.device)
        if torch.any((y < 0) | (y > self.n_classes)):
            raise ValueError(f"labels must lie in 0..{self.n_classes} ({self.n_classes} is the null label), got "
                             f"{sorted(set(y.tolist()))}")
        xp = x.to(dtype=p.dtype, device=p.device)
        tp = _rows(t, x.shape[0], xp)
        features = torch.cat([xp, self.embedding(tp), self.class_embedding(y).to(xp.dtype)], dim=1)
        return self.net(features).to(dtype=x.dtype, device=x.device)


# -- the adapter ---------------------------------------------------------------------------------------------
class ScoreAdapter(nn.Module):
    r"""A network, or any callable, seen as a score function (see :func:`as_score`).

    It is an :class:`torch.nn.Module` holding the wrapped network, so that it can be trained (its parameters are the
    network's), moved between devices, copied for an EMA, and handed to samplers unchanged.
    """

    def __init__(self, model: Callable, prediction: str = "score", sde: VPSDE | None = None,
                 conditional: bool = False):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {sorted(PREDICTIONS)}, got {prediction!r}")
        sde = sde if sde is not None else ConstantVP()
        if not isinstance(sde, VPSDE):
            raise TypeError(f"sde must be a VPSDE, got {type(sde).__name__}")
        if isinstance(model, nn.Module):
            self.model = model
        else:
            self.__dict__["model"] = model  # a plain callable: not a submodule
        self.prediction, self.sde, self.conditional = prediction, sde, bool(conditional)
        if hasattr(model, "n_classes"):
            self.n_classes = model.n_classes
        if hasattr(model, "null_label"):
            self.null_label = model.null_label

    def forward(self, *args) -> torch.Tensor:
        """``score(x, t)``, or ``score(x, y, t)`` for a conditional model."""
        expected = 3 if self.conditional else 2
        if len(args) != expected:
            form = "score(x, y, t)" if self.conditional else "score(x, t)"
            raise TypeError(f"this score function is called as {form}, got {len(args)} arguments")
        x, t = _check_x(args[0]), args[-1]
        rows = _rows(t, x.shape[0], x)
        if self.prediction != "score":
            rows = self.sde.check_time(rows).to(dtype=x.dtype, device=x.device)
        out = self.model(*args[:-1], rows)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ValueError(f"the model must return a tensor shaped like x {tuple(x.shape)}, got "
                             f"{getattr(out, 'shape', type(out))}")
        out = out.to(dtype=x.dtype, device=x.device)
        if self.prediction == "score":
            return out
        a = self.sde.alpha(rows)[:, None]
        h = self.sde.h(rows)[:, None]
        if self.prediction == "eps":
            return -out / torch.sqrt(h)
        if self.prediction == "x0":
            return (a * out - x) / h
        return -x - a * out / torch.sqrt(h)  # "v"

    def extra_repr(self) -> str:
        return f"prediction={self.prediction!r}, sde={self.sde!r}, conditional={self.conditional}"


def as_score(model: Callable, prediction: str = "score", sde: VPSDE | None = None, *,
             conditional: bool | None = None) -> ScoreAdapter:
    r"""Turn a network predicting noise, data, velocity or the score into a score function.

    With :math:`x_t = \alpha x_0 + \sqrt h\,\varepsilon` and :math:`\alpha^2 + h = 1` (review Section 2.1) the
    network output :math:`f` is read as

    * ``"score"``: :math:`s = f`;
    * ``"eps"`` (noise, DDPM :cite:p:`ho2020denoising`): :math:`s = -f/\sqrt{h}`, since
      :math:`\nabla\log p_t(x) = -\mathbb E[\varepsilon\mid x_t = x]/\sqrt h`;
    * ``"x0"`` (clean data): :math:`s = (\alpha f - x)/h`, Tweedie's formula
      :math:`\mathbb E[X_0\mid X_t = x] = (x + h\nabla\log p_t(x))/\alpha` solved for the score;
    * ``"v"`` (velocity :math:`v = \alpha\varepsilon - \sqrt h\,x_0`): since
      :math:`\varepsilon = \sqrt h\,x + \alpha v` and :math:`x_0 = \alpha x - \sqrt h\,v`,

      .. math::

          s = -\frac{\varepsilon}{\sqrt h} = -x - \frac{\alpha}{\sqrt h}\,v .

    Each identity is linear in the prediction, so the exact conditional expectation of the target (the minimiser
    of the matching regression loss) maps to the exact score.  The idea is that of DPM-Solver's model wrapper: one
    adapter, so that samplers never special-case a parameterisation.  Review Section 4.1; book chapter *Learning the
    score*.

    Parameters
    ----------
    model : callable
        ``model(x, t)`` or, if conditional, ``model(x, y, t)``, returning a tensor shaped like x.  Any
        :class:`torch.nn.Module` (its parameters become the adapter's) or plain function.
    prediction : {"score", "eps", "x0", "v"}
        What the model predicts.
    sde : VPSDE, optional
        The forward process giving :math:`\alpha(t), h(t)` (default :class:`~diffnotes.sde.ConstantVP`).  It must be
        the process the network was trained with.
    conditional : bool, optional
        Whether the model takes a label; by default the model's ``conditional`` attribute (False if absent).

    Returns
    -------
    ScoreAdapter
        A module with ``forward(x, t)`` (or ``forward(x, y, t)``) following the score protocol; t may be a float or
        an (n,) tensor, and for every prediction but ``"score"`` must lie in (0, T].
    """
    if conditional is None:
        conditional = bool(getattr(model, "conditional", False))
    return ScoreAdapter(model, prediction, sde, conditional)


class LabelledScore:
    """A conditional score function with its label fixed: an unconditional-protocol ``score(x, t)``."""

    def __init__(self, cond_score: Callable, y, n_classes: int | None = None, null_label: int | None = None):
        if not callable(cond_score):
            raise TypeError("cond_score must be a callable score(x, y, t)")
        self.cond_score = cond_score
        self.n_classes = n_classes if n_classes is not None else getattr(cond_score, "n_classes", None)
        self.null_label = null_label if null_label is not None else getattr(cond_score, "null_label", None)
        y = torch.as_tensor(y)
        _labels(y, y.shape[0] if y.ndim == 1 else 1)  # type check
        y = y.long()
        allowed = {self.null_label} if self.null_label is not None else set()
        bad = [v for v in y.reshape(-1).tolist()
               if v not in allowed and (v < 0 or (self.n_classes is not None and v >= self.n_classes))]
        if bad:
            top = "" if self.n_classes is None else f"..{self.n_classes - 1}"
            null = "" if self.null_label is None else f" or the null label {self.null_label}"
            raise ValueError(f"labels must be class ids 0{top}{null}; got {sorted(set(bad))}")
        self.y = y

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        x = _check_x(x)
        return self.cond_score(x, _labels(self.y, x.shape[0], device=x.device), t)

    def __repr__(self) -> str:
        label = self.y.tolist()
        return f"LabelledScore({self.cond_score!r}, y={label})"


def with_label(cond_score: Callable, y, *, n_classes: int | None = None) -> LabelledScore:
    r"""Fix the label of a conditional score function: :math:`x, t \mapsto s(x, y, t)`.

    The result follows the unconditional protocol ``score(x, t)`` and can be handed to any sampler.  ``y`` is one
    label, or one label per row of the batches it will be called with.  With ``y = cond_score.null_label`` (a
    network trained with label dropout, or an adapter of one) it is the learned unconditional score
    :math:`s(x, \varnothing, t)` (review Section 5.1, book chapter *Conditional diffusion and guidance*;
    :cite:p:`ho2022classifier`).

    Parameters
    ----------
    cond_score : callable
        ``cond_score(x, y, t)``.
    y : int or array of ints
        The label(s): class ids :math:`0..C-1`, or the null label.
    n_classes : int, optional
        The number of classes C used to validate y (default: ``cond_score.n_classes`` if present).
    """
    return LabelledScore(cond_score, y, n_classes)
