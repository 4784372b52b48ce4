"""A small, consistent figure style for the book's chapters.

Chapters call :func:`use_style` once after their imports.  It only sets matplotlib's rc parameters: it never
selects a backend, so figures appear in the rendered pages and in a notebook alike.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np

__all__ = ["use_style", "COLORS", "reference_line"]

#: A colour-blind-safe cycle (the eight Okabe-Ito colours and a grey), used for the samplers and estimators of
#: every chapter.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999"]


def use_style() -> None:
    """Set the book's figure style: compact sizes, readable fonts, a colour-blind-safe cycle, light grids."""
    mpl.rcParams.update(
        {
            "figure.figsize": (7.0, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "figure.constrained_layout.use": True,
            "font.size": 10,
            "axes.titlesize": 10,
            "axes.labelsize": 10,
            "legend.fontsize": 8,
            "legend.frameon": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": mpl.cycler(color=COLORS),
            "image.cmap": "viridis",
        }
    )


def reference_line(ax, x, anchor_y: float, slope: float, *, loglog: bool = True, label: str | None = None, **kw):
    """Draw the line of a theoretical rate through ``(x[0], anchor_y)``: slope on log-log (or semilog-y) axes.

    Used to put the theory's slope beside measured points, so the eye compares the two directly.
    """
    x = np.asarray(x, dtype=float)
    if loglog:
        y = anchor_y * (x / x[0]) ** slope
    else:
        y = anchor_y * np.exp(slope * (x - x[0]))
    kw.setdefault("color", "0.4")
    kw.setdefault("linestyle", "--")
    kw.setdefault("linewidth", 1)
    return ax.plot(x, y, label=label, **kw)
