"""Former name of :mod:`diffnotes.optimization` (book chapter *Optimization of the score objective*).

Everything is re-exported from there, so ``from diffnotes import gmm_learning`` keeps working (no warning: chapters
import it).  ``dsm_loss`` is the former name of :func:`diffnotes.optimization.mixture_dsm_loss`, the DDPM loss of
the symmetric two-component mixture, renamed so that it no longer shares its name with the general
:func:`diffnotes.losses.dsm_loss`.
"""

from . import optimization as _optimization

globals().update({name: getattr(_optimization, name) for name in _optimization.__all__})

#: Former name of :func:`diffnotes.optimization.mixture_dsm_loss`.
dsm_loss = _optimization.mixture_dsm_loss

__all__ = [*_optimization.__all__, "dsm_loss"]
