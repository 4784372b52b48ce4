"""diffnotes: the algorithms of the review "Opportunities and challenges of diffusion models for generative AI".

Modules are named after the review's concepts; one protocol joins targets, networks, losses and samplers.  See the
book for the chapter that uses each module.

The score protocol
------------------
* A **score** is a callable ``score(x, t) -> tensor shaped like x``: ``x`` a floating tensor of shape (n, D), ``t``
  a number or one time per row (shape (n,) or (n, 1)) in (0, T].  Exact targets (``target.score``), estimators
  (``estimator.score``), networks wrapped by :func:`~diffnotes.networks.as_score`, guided combinations
  (:mod:`diffnotes.guidance`) and :meth:`diffnotes.ising.IsingModel.score` are scores.
* **Consumers** (samplers, losses, guidance, :func:`~diffnotes.estimators.score_error`) take a score; where they
  take an object they also accept one with a ``.score(x, t)`` method (a target or an estimator itself).
* **Factories** that build a score are named as such and return the callable, e.g.
  :meth:`diffnotes.spins.SpinModel.score_function` (``model.score_function(sde, method)(x, t)``).
* A **conditional score** has the one form ``score(x, y, t)``: labels ``y`` (an int or one per row) between the
  points and the time, as :class:`~diffnotes.networks.ConditionalScoreMLP` wrapped by ``as_score(...,
  conditional=True)`` and the guidance helpers use it; :func:`~diffnotes.networks.with_label` fixes ``y`` and turns
  it into a plain score.
* Bad input gets one answer everywhere (see the private module ``diffnotes._checks``): points that are not a
  torch tensor (a list, a numpy array) or are an integer tensor raise ``TypeError``; a wrong shape, NaN or infinite
  entries, and times outside (0, T] raise ``ValueError``.
"""

__version__ = "0.1.0"
