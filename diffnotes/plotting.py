"""A small, consistent figure style for the book's chapters.

Chapters call :func:`use_style` once after their imports.  It only sets matplotlib's rc parameters: it never
selects a backend, so figures appear in the rendered pages and in a notebook alike.  :func:`box` and :func:`arrow`
draw block diagrams; :func:`draw_encoder_decoder` and :func:`draw_unet` are the review's Figs. 5 and 4 (chapter
*Score approximation*), the second read off a :class:`~diffnotes.networks.UNet` module.
"""

from __future__ import annotations

import math
import sys

import matplotlib as mpl
import numpy as np
from matplotlib.patches import FancyBboxPatch

__all__ = ["use_style", "COLORS", "reference_line", "box", "arrow", "draw_encoder_decoder", "draw_unet"]

#: A colour-blind-safe cycle (the eight Okabe-Ito colours and a grey), used for the samplers and estimators of
#: every chapter.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999"]


def use_style() -> None:
    """Set the book's figure style: compact sizes, readable fonts, a colour-blind-safe cycle, light grids.

    Figures have an opaque white background (legible on a dark page too).  Inside IPython (a notebook, or the book's
    execution) inline figures are also drawn at twice their pixel density ("retina" PNG, displayed at the same size),
    so that small legends and tick labels stay sharp in the book's column.
    """
    mpl.rcParams.update(
        {
            "figure.figsize": (7.0, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 200,
            "figure.facecolor": "white",
            "savefig.facecolor": "white",
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
    _retina_inline()


def _retina_inline() -> None:
    """Ask IPython's inline backend for retina PNGs; nothing happens outside IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None or ipython.get_ipython() is None:
        return
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("retina")


def reference_line(ax, x, anchor_y: float, slope: float, *, loglog: bool = True, label: str | None = None, **kw):
    """Draw the line of a theoretical rate through ``(x[0], anchor_y)``: slope on log-log (or semilog-y) axes.

    Used to put the theory's slope beside measured points, so the eye compares the two directly.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The axes to draw on.
    x : array_like
        The abscissae of the line; the line passes through ``(x[0], anchor_y)``.
    anchor_y : float
        The line's value at ``x[0]``.
    slope : float
        The rate: ``y = anchor_y * (x / x[0]) ** slope`` on log-log axes, ``y = anchor_y * exp(slope * (x - x[0]))``
        on semilog-y axes.
    loglog : bool
        Log-log (default True) or semilog-y.
    label : str, optional
        Legend label.
    **kw
        Passed to ``ax.plot`` (defaults: colour ``"0.4"``, dashed, line width 1).

    Returns
    -------
    list of matplotlib.lines.Line2D
        What ``ax.plot`` returns.
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


def _axes(ax, figsize):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def box(ax, x: float, y: float, text: str, *, w: float = 1.3, h: float = 0.7, color: str = "#dce9f5",
        fontsize: float = 9):
    """A rounded box of width ``w`` and height ``h`` centred at ``(x, y)`` with ``text`` in it (block diagrams).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The axes to draw on (data coordinates).
    x, y : float
        The centre.
    text : str
        The label, centred; may contain newlines and mathtext.
    w, h : float
        Width and height in data units.
    color : str
        Fill colour.
    fontsize : float
        Font size of the label.
    """
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", fc=color, ec="0.3"))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, start, end, *, color: str = "0.2", **style):
    """An arrow from ``start`` to ``end`` (data coordinates); ``style`` goes to matplotlib's ``arrowprops``
    (e.g. ``ls="--"``, ``connectionstyle="arc3,rad=-0.2"``).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The axes to draw on.
    start, end : (float, float)
        Tail and head of the arrow.
    color : str
        Line colour.
    **style
        Further ``arrowprops`` entries.
    """
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=color, **style))


def draw_encoder_decoder(ax=None):
    r"""The review's Fig. 5: the encoder-decoder score network
    :math:`s_{V,\theta}(x, t) = (V f_\theta(V^\top x, t) - x)/h(t)` as a block diagram
    (:class:`~diffnotes.networks.EncoderDecoderScore`; chapter *Score approximation*).

    Parameters
    ----------
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new 9 x 2.6 inch figure by default.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax, (9, 2.6))
    xs = [0, 1.8, 3.6, 5.5, 7.4, 8.9, 10.4]
    widths = [1.3, 1.3, 1.3, 1.7, 1.3, 0.6, 1.2]
    labels = ["$x\\in\\mathbb{R}^D$", "encoder\n$V^\\top$", "$z\\in\\mathbb{R}^d$",
              "$f_\\theta(z, t)$\n(MLP in $d$ dims)", "decoder\n$V$", "$+$", "$\\div\\, h(t)$"]
    colors = ["white", "#f5e3c8", "white", "#d7ecd9", "#f5e3c8", "white", "white"]
    for x, lab, c, w in zip(xs, labels, colors, widths, strict=True):
        box(ax, x, 0, lab, w=w, color=c)
    for k in range(len(xs) - 1):
        arrow(ax, (xs[k] + widths[k] / 2 + 0.05, 0), (xs[k + 1] - widths[k + 1] / 2 - 0.05, 0))
    ax.text(12.1, 0, "$s_{V,\\theta}(x, t)$", ha="center", va="center", fontsize=10)
    arrow(ax, (xs[-1] + widths[-1] / 2 + 0.05, 0), (11.45, 0))
    arrow(ax, (xs[0], 0.36), (xs[5], 0.36), color=COLORS[3], connectionstyle="arc3,rad=-0.25", ls="--")
    ax.text((xs[0] + xs[5]) / 2, 1.45, "skip connection $-x$", color=COLORS[3], ha="center")
    box(ax, xs[3], -1.2, "time $t$", w=1.0, h=0.45, color="white")
    arrow(ax, (xs[3], -0.95), (xs[3], -0.37))
    ax.set_xlim(-0.9, 13)
    ax.set_ylim(-1.6, 1.8)
    ax.axis("off")
    return ax


def draw_unet(unet, ax=None):
    """The review's Fig. 4 drawn from a :class:`~diffnotes.networks.UNet`: one box per stage of
    :meth:`~diffnotes.networks.UNet.architecture` (channels, resolution, parameter count), placed by resolution,
    with the skip connections dashed (chapter *Score approximation*).

    Parameters
    ----------
    unet : diffnotes.networks.UNet
        The module to draw.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new 9 x 3.4 inch figure by default.

    Returns
    -------
    matplotlib.axes.Axes
    """
    stages = unet.architecture()
    ax = _axes(ax, (9, 3.4))
    pos = {}
    colors = {"conv": "white", "down": "#dce9f5", "middle": "#d7ecd9", "up": "#f5e3c8"}
    for i, s in enumerate(stages):
        level = int(round(math.log2(unet.image_shape[1] / s["resolution"][0])))
        x, y = 1.6 * i, -1.3 * level
        pos[s["name"]] = (x, y)
        box(ax, x, y, f"{s['name']}\n{s['in_channels']}$\\to${s['out_channels']} ch\n"
                      f"{s['resolution'][0]}x{s['resolution'][1]}, {s['parameters']:,} p", w=1.35,
            h=max(0.25 + 0.02 * s["out_channels"], 0.8), color=colors[s["kind"]])
    for a, b in zip(stages[:-1], stages[1:], strict=True):
        (xa, ya), (xb, yb) = pos[a["name"]], pos[b["name"]]
        arrow(ax, (xa + 0.68, ya), (xb - 0.68, yb))
        if ya != yb:
            down = yb < ya
            ax.text((xa + xb) / 2 + (0.2 if down else -0.2), (ya + yb) / 2, "pool" if down else "upsample",
                    fontsize=7, color="0.4", ha="left" if down else "right", va="center")
    for s in stages:
        if "skip_from" in s:
            (xa, ya), (xb, yb) = pos[s["skip_from"]], pos[s["name"]]
            arrow(ax, (xa + 0.3, ya + 0.45), (xb - 0.3, yb + 0.45), color=COLORS[3], ls="--",
                  connectionstyle="arc3,rad=-0.12")
    middle = next(s["name"] for s in stages if s["kind"] == "middle")
    ax.text(pos[middle][0], 0.9, "dashed: skip connections (concatenation); every block also receives the time "
            "embedding", ha="center", fontsize=8, color="0.3")
    ax.set_xlim(-1, 1.6 * (len(stages) - 1) + 1)
    ax.set_ylim(-1.3 * len(unet.channels) - 0.8, 1.2)
    ax.axis("off")
    return ax
