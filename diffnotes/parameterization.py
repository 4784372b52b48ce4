r"""The parameterisation adapter: any network output (noise, clean data, velocity or the score) seen as a score.

Networks may predict the score itself or, as is usual in practice, the noise, the clean data or the velocity; with
:math:`x = \alpha x_0 + \sqrt h\,\varepsilon` (:math:`\alpha^2 + h = 1` for every VP process) the four are linked by

.. math::

    s = -\frac{\varepsilon}{\sqrt h} = \frac{\alpha x_0 - x}{h} = -x - \frac{\alpha}{\sqrt h}\,v,
    \qquad v = \alpha\varepsilon - \sqrt h\,x_0 .

:func:`as_score` applies this map once (the idea of DPM-Solver's model wrapper), so that samplers, losses and guidance
only ever see the score protocol ``score(x, t)`` (or ``score(x, y, t)`` for conditional networks) and never
special-case a parameterisation; :func:`with_label` fixes the label of a conditional score.  Everything here is also
importable from :mod:`diffnotes.networks`, where it lived before.  Review Sections 4.1 and 5.1; book chapters
*Learning the score* and *Conditional diffusion and guidance*.  References: :cite:p:`ho2020denoising,ho2022classifier`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import _checks
from .sde import VPSDE

__all__ = ["ScoreAdapter", "LabelledScore", "as_score", "with_label", "PREDICTIONS"]

#: The quantities a network may predict, and what :func:`as_score` does with each.
PREDICTIONS = {
    "score": "s = output",
    "eps": "s = -eps / sqrt(h)",
    "x0": "s = (alpha x0 - x) / h",
    "v": "s = -x - alpha v / sqrt(h)",
}



# -- the adapter ---------------------------------------------------------------------------------------------
class ScoreAdapter(nn.Module):
    r"""A network, or any callable, seen as a score function (see :func:`as_score`).

    It is an :class:`torch.nn.Module` holding the wrapped network, so that it can be trained (its parameters are the
    network's), moved between devices, copied for an EMA, and handed to samplers unchanged.

    Parameters
    ----------
    model : callable
        ``model(x, t)`` or, if conditional, ``model(x, y, t)``, returning a tensor shaped like x.
    prediction : {"score", "eps", "x0", "v"}
        What the model predicts (the keys of ``PREDICTIONS``; default ``"score"``).
    sde : VPSDE, optional
        The forward process the network was trained with (default :class:`~diffnotes.sde.ConstantVP`).
    conditional : bool
        Whether the model takes a label (default False).
    """

    def __init__(self, model: Callable, prediction: str = "score", sde: VPSDE | None = None,
                 conditional: bool = False):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {sorted(PREDICTIONS)}, got {prediction!r}")
        sde = _checks.sde_or_default(sde)
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
        x, t = _checks.points(args[0], "x"), args[-1]
        rows = _checks.time_rows(t, x.shape[0], x)
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
    """A conditional score function with its label fixed: an unconditional-protocol ``score(x, t)``.

    Parameters
    ----------
    cond_score : callable
        ``cond_score(x, y, t)``.
    y : int or array_like of int
        The label(s): one, or one per row of the batches it will be called with; class ids >= 0 (below
        ``n_classes`` when known) or the null label.
    n_classes : int, optional
        The number of classes C used to validate y (default ``cond_score.n_classes`` if present).
    null_label : int, optional
        The null label allowed in y (default ``cond_score.null_label`` if present).
    """

    def __init__(self, cond_score: Callable, y, n_classes: int | None = None, null_label: int | None = None):
        if not callable(cond_score):
            raise TypeError("cond_score must be a callable score(x, y, t)")
        self.cond_score = cond_score
        self.n_classes = n_classes if n_classes is not None else getattr(cond_score, "n_classes", None)
        self.null_label = null_label if null_label is not None else getattr(cond_score, "null_label", None)
        y = torch.as_tensor(y)
        _checks.labels(y, y.shape[0] if y.ndim == 1 else 1)  # type check
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
        x = _checks.points(x, "x")
        return self.cond_score(x, _checks.labels(self.y, x.shape[0], device=x.device), t)

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
