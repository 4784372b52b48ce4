"""Input checks shared by every module of the package (private).

One policy for what a caller hands in, so that every score provider and consumer answers the same bad input the
same way:

* **points** ``x`` at which a score, a density or a model is evaluated must be a :class:`torch.Tensor` of floating
  dtype and shape ``(n, D)``.  A Python list or a numpy array raises ``TypeError`` (convert it with
  ``torch.as_tensor`` yourself: the package never guesses a dtype or a device for points), an integer or boolean
  tensor raises ``TypeError`` (an integer tensor is almost always a mistake, e.g. spins or labels passed as points),
  a wrong number of axes or of columns raises ``ValueError``, and NaN or infinite entries raise ``ValueError``.
  The points keep their dtype and device.
* **data** handed to a constructor (a sample to build an estimator from, parameters of a law) is converted: any
  array of numbers is accepted; what cannot be converted raises ``TypeError``, wrong shapes and non-finite values
  ``ValueError``.
* **times** ``t`` are a number or a tensor of shape ``()``, ``(n,)`` or ``(n, 1)``, and lie in ``(0, T]``
  (:meth:`~diffnotes.sde.VPSDE.check_time`); anything else raises ``ValueError``.
* **sizes** (counts, numbers of steps, dimensions) are integers (Python or numpy, not bools) at least some minimum:
  anything else raises ``ValueError`` (the metrics, which always raised ``TypeError`` for a non-integer, keep
  doing so); see :func:`positive_int`.
* **generators**: every function that draws takes ``generator=``: ``None`` (fresh entropy: not reproducible), an
  ``int`` seed, a :class:`torch.Generator` or a :class:`numpy.random.Generator`.  Code that draws with torch
  normalises it with :func:`generator` (a torch generator is seeded from a numpy one), code that draws with numpy
  with :func:`numpy_generator` (a numpy generator is seeded from a torch one; an int seed gives the same numbers as
  ``numpy.random.default_rng(seed)``).  ``None`` never means a fixed seed.
* **sde**: ``None`` is the review's :class:`~diffnotes.sde.ConstantVP`; anything that is not a
  :class:`~diffnotes.sde.VPSDE` raises ``TypeError``.

Every message names the argument and the expected shape.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch

__all__ = ["points", "data", "sde_or_default", "positive_int", "probability", "labels", "time_column",
           "time_rows", "generator", "numpy_generator", "renamed", "score_callable", "sample", "sizes"]


# -- points and data ---------------------------------------------------------------------------------------------------
def points(x, name: str = "x", dim: int | None = None, *, finite: bool = True, min_n: int = 0,
           numpy: bool = False) -> torch.Tensor:
    """Check that ``x`` is a floating tensor of shape (n, D) (D = ``dim`` when given); return it unchanged.

    Parameters
    ----------
    x : torch.Tensor
        The points.
    name : str
        The argument's name, for the messages.
    dim : int, optional
        The required number of columns D.
    finite : bool
        Whether NaN and infinite entries are refused (default True).
    min_n : int
        The least number of rows.
    numpy : bool
        Whether a numpy array is accepted (converted to float64); only for data handed to losses and trainers,
        never for the points of a score.
    """
    shape = f"(n, {dim})" if dim is not None else "(n, D)"
    if numpy and isinstance(x, np.ndarray):
        x = torch.as_tensor(x, dtype=torch.float64)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor of shape {shape}, got {type(x).__name__} "
                        "(convert it with torch.as_tensor)")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of shape {shape}, got dtype {x.dtype}")
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim) or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} must have at least {min_n} rows, got {x.shape[0]}")
    if finite and not bool(torch.all(torch.isfinite(x.detach()))):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def data(value, name: str = "data", min_n: int = 1, shape: str = "(n, D)") -> torch.Tensor:
    """Convert a sample (any array of numbers, shaped (n, D)) to a finite float64 tensor, detached.

    Parameters
    ----------
    value : array_like or torch.Tensor
        The sample.
    name : str
        The argument's name, for the messages.
    min_n : int
        The least number of rows.
    shape : str
        The expected shape, as written in the messages.
    """
    if isinstance(value, torch.Tensor):
        out = value.detach().to(torch.float64)
    else:
        try:
            out = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be an array of numbers shaped {shape}, got {type(value).__name__}") from err
    if out.ndim != 2 or out.shape[1] < 1:
        raise ValueError(f"{name} must be shaped {shape} with a non-empty last axis, got shape {tuple(out.shape)}")
    if out.shape[0] < min_n:
        raise ValueError(f"{name} has n = {out.shape[0]} points; this estimator needs at least {min_n}")
    if not torch.all(torch.isfinite(out)):
        raise ValueError(f"{name} must be finite")
    return out


# -- the forward process --------------------------------------------------------------------------------------------
def sde_or_default(sde, default: bool = True):
    """The forward process ``sde``, checked to be a :class:`~diffnotes.sde.VPSDE`.

    Parameters
    ----------
    sde : VPSDE or None
        The forward process; None is :class:`~diffnotes.sde.ConstantVP` () when ``default`` is true.
    default : bool
        Whether None stands for the default (otherwise None is refused like any non-VPSDE).
    """
    from .sde import VPSDE, ConstantVP

    if sde is None and default:
        return ConstantVP()
    if not isinstance(sde, VPSDE):
        raise TypeError(f"sde must be a VPSDE (see diffnotes.sde), got {type(sde).__name__}")
    return sde


# -- numbers ---------------------------------------------------------------------------------------------------------
def positive_int(value, name: str, minimum: int = 1, *, floats: bool = False,
                 error: type[Exception] = ValueError) -> int:
    """An integer ``value >= minimum`` (a Python or numpy integer, never a bool), returned as an int.

    Parameters
    ----------
    value : int
        The value.
    name : str
        The argument's name, for the messages.
    minimum : int
        The least value allowed (default 1).
    floats : bool
        Whether a float with an integral value (``3.0``) is accepted too.
    error : type
        The exception raised for a value that is not an integer (``ValueError``; the metrics keep ``TypeError``).
        A value below ``minimum`` always raises ``ValueError``.
    """
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if floats and isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        integral = True
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if not integral:
        raise error(f"{name} must be {what}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def sizes(**values) -> None:
    """Check that every keyword value is a positive integer (an integral float is accepted).

    Parameters
    ----------
    **values : int
        The sizes, by name.
    """
    for name, value in values.items():
        positive_int(value, name, floats=True)


def probability(value, name: str, *, open_left: bool = False, open_right: bool = False) -> float:
    """A number in [0, 1] (or (0, 1], [0, 1), (0, 1) with the open flags).

    Parameters
    ----------
    value : float
        The value.
    name : str
        The argument's name, for the messages.
    open_left, open_right : bool
        Whether 0, resp. 1, is excluded.
    """
    try:
        p = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, got {value!r}") from err
    lo_ok = p > 0 if open_left else p >= 0
    hi_ok = p < 1 if open_right else p <= 1
    if not (math.isfinite(p) and lo_ok and hi_ok):
        interval = ("(" if open_left else "[") + "0, 1" + (")" if open_right else "]")
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return p


def labels(y, n: int, device=None) -> torch.Tensor:
    """Integer labels given as an int, a 0-d or an (n,) tensor/array, returned as a long (n,) tensor.

    Parameters
    ----------
    y : int or array_like
        One label for every row, or one label per row.
    n : int
        The number of rows.
    device : torch.device, optional
        Where the result lives.
    """
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


# -- times -----------------------------------------------------------------------------------------------------------
def time_column(t: torch.Tensor, n: int, name: str = "t") -> torch.Tensor:
    """Shape a scalar, (n,) or (n, 1) time tensor as a column for broadcasting against (n, D).

    A scalar becomes (1, 1) (it broadcasts); (n,) becomes (n, 1).

    Parameters
    ----------
    t : torch.Tensor
        The time(s).
    n : int
        The number of rows of the points.
    name : str
        The argument's name, for the messages.
    """
    if t.ndim == 0:
        return t.reshape(1, 1)
    if t.ndim == 1 and t.shape[0] == n:
        return t.reshape(n, 1)
    if t.ndim == 2 and t.shape == (n, 1):
        return t
    raise ValueError(f"{name} must be a scalar or have one entry per row (shape ({n},)), got shape {tuple(t.shape)}")


def time_rows(t, n: int, like: torch.Tensor, name: str = "t") -> torch.Tensor:
    """A time given as a number or a 0-d, (n,) or (n, 1) tensor, returned as an (n,) tensor typed like ``like``.

    Parameters
    ----------
    t : float or torch.Tensor
        The time(s).
    n : int
        The number of rows.
    like : torch.Tensor
        Gives the dtype and device.
    name : str
        The argument's name, for the messages.
    """
    from .sde import as_time

    t = as_time(t, like=like)
    if t.ndim == 0:
        return t.expand(n)
    if t.ndim == 2 and t.shape == (n, 1):
        return t.reshape(n)
    if t.ndim == 1 and t.shape[0] == n:
        return t
    raise ValueError(f"{name} must be a number or have one entry per row (shape ({n},)), got shape "
                     f"{tuple(t.shape)}")


# -- randomness ------------------------------------------------------------------------------------------------------
def generator(gen, device=None) -> torch.Generator | None:
    """A :class:`torch.Generator` from None, an int seed, a torch Generator or a numpy Generator.

    ``None`` is returned unchanged: the draws then use torch's global generator, i.e. fresh entropy as far as the
    package is concerned (not reproducible unless the caller seeded torch globally; the package never does).

    Parameters
    ----------
    gen : None, int, torch.Generator or numpy.random.Generator
        The source of randomness.  A numpy generator is consumed once, to seed a new torch generator.
    device : torch.device, optional
        Device of a generator created here.
    """
    if gen is None or isinstance(gen, torch.Generator):
        return gen
    if isinstance(gen, np.random.Generator):
        return torch.Generator(device=device or "cpu").manual_seed(int(gen.integers(0, 2**63 - 1)))
    return torch.Generator(device=device or "cpu").manual_seed(_seed(gen))


def _seed(gen) -> int:
    """A non-negative int seed, or the one TypeError of both generator normalisers for anything else."""
    if isinstance(gen, (int, np.integer)) and not isinstance(gen, bool):
        if gen < 0:
            raise ValueError(f"a seed must be non-negative, got {gen}")
        return int(gen)
    raise TypeError(f"generator must be None, an int seed, a torch.Generator or a numpy Generator; got "
                    f"{type(gen).__name__}")


def numpy_generator(gen) -> np.random.Generator:
    """A :class:`numpy.random.Generator` from None, an int seed, a numpy Generator or a torch Generator.

    ``None`` gives a generator seeded from fresh OS entropy (not reproducible); an int seed gives
    ``numpy.random.default_rng(seed)``; a numpy generator is returned itself (the caller's stream is consumed); a
    torch generator is consumed once, to seed a new numpy generator.

    Parameters
    ----------
    gen : None, int, numpy.random.Generator or torch.Generator
        The source of randomness.
    """
    if gen is None:
        return np.random.default_rng()
    if isinstance(gen, np.random.Generator):
        return gen
    if isinstance(gen, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen)))
    return np.random.default_rng(_seed(gen))


#: Default of a deprecated keyword: tells "not passed" from None.
UNSET = object()


def renamed(value, old_value, old: str, new: str = "generator", stacklevel: int = 3):
    """The value of a keyword argument renamed from ``old`` to ``new``: ``old_value`` when only the old name was
    given (with a :class:`DeprecationWarning`), else ``value``; both at once raise ``TypeError``.

    Parameters
    ----------
    value
        What was passed under the new name (its default when not passed).
    old_value
        What was passed under the old name, :data:`UNSET` when not passed.
    old, new : str
        The two names, for the messages.
    stacklevel : int
        Where the warning points (3: the caller of the function that calls this).
    """
    if old_value is UNSET:
        return value
    if value is not None:
        raise TypeError(f"pass {new}= only ({old}= is its deprecated former name)")
    warnings.warn(f"{old}= is deprecated and will be removed; pass {new}= (same meaning)", DeprecationWarning,
                  stacklevel=stacklevel)
    return old_value


# -- the score protocol ---------------------------------------------------------------------------------------------
def score_callable(score, name: str = "score"):
    """The callable ``(x, t) -> tensor like x`` behind ``score``: a callable itself, or an object's ``.score``.

    Parameters
    ----------
    score : callable or object with a ``score`` method
        A score function, or a provider of one (a target, an estimator).
    name : str
        The argument's name, for the messages.
    """
    if callable(score):
        return score
    method = getattr(score, "score", None)
    if callable(method):
        return method
    raise TypeError(f"{name} must be a callable score(x, t) or an object with a .score(x, t) method, got "
                    f"{type(score).__name__}")


def sample(x, name: str = "x0") -> torch.Tensor:
    """A sample (n, D), n >= 1, handed to a loss or a trainer: a floating tensor, or a numpy array (to float64).

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        The sample.
    name : str
        The argument's name, for the messages.
    """
    return points(x, name, finite=False, min_n=1, numpy=True)
