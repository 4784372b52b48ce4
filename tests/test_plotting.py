"""Tests of diffnotes.plotting: the diagrams are drawn from the modules they show."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402

from diffnotes.networks import UNet  # noqa: E402
from diffnotes.plotting import arrow, box, draw_encoder_decoder, draw_unet, reference_line  # noqa: E402


def _boxes(ax):
    return [p for p in ax.patches if isinstance(p, FancyBboxPatch)]


def test_draw_unet_has_one_box_per_stage_with_its_numbers():
    for channels in [(16, 32), (8, 16, 32)]:
        unet = UNet((1, 8, 8), channels=channels, generator=0)
        ax = draw_unet(unet)
        stages = unet.architecture()
        assert len(_boxes(ax)) == len(stages)
        texts = [t.get_text() for t in ax.texts]
        for s in stages:
            assert any(t.startswith(s["name"]) and f"{s['parameters']:,} p" in t for t in texts)
        skips = sum("skip_from" in s for s in stages)
        arrows = [a.arrow_patch for a in ax.texts if isinstance(a, Annotation) and a.arrow_patch is not None]
        dashed = [p for p in arrows if p.get_linestyle() == "--"]
        assert len(dashed) == skips
        plt.close("all")


def test_encoder_decoder_diagram_and_helpers():
    ax = draw_encoder_decoder()
    assert len(_boxes(ax)) == 8  # seven blocks and the time input
    box(ax, 0, 0, "extra")
    arrow(ax, (0, 0), (1, 1), ls="--")
    assert len(_boxes(ax)) == 9
    plt.close("all")


def test_reference_line_has_the_slope():
    _, ax = plt.subplots()
    (line,) = reference_line(ax, [1, 10, 100], 2.0, -0.5)
    x, y = line.get_data()
    np.testing.assert_allclose(np.log(y[-1] / y[0]) / np.log(x[-1] / x[0]), -0.5)
    plt.close("all")


def test_use_style_gives_opaque_figures_and_retina_inline_pngs_in_ipython():
    import struct

    from IPython.core.interactiveshell import InteractiveShell

    from diffnotes.plotting import use_style

    use_style()  # outside IPython: only the rc parameters
    assert matplotlib.rcParams["figure.facecolor"] == "white"
    shell = InteractiveShell.instance()
    try:
        use_style()
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, 1])
        data, metadata = shell.display_formatter.format(fig)
        png = data["image/png"]
        png = png if isinstance(png, bytes) else __import__("base64").b64decode(png)
        pixels = struct.unpack(">I", png[16:20])[0]  # the IHDR width
        # drawn at twice the density, shown at the figure's own size
        assert pixels == 2 * metadata["image/png"]["width"]
        plt.close(fig)
    finally:
        InteractiveShell.clear_instance()
